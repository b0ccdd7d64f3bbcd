"""The `refusal-atlas` command line.

`run` takes one flag per field of `AtlasSettings`, built from the settings models themselves so
that the flags, their help and the Prefect UI's parameter form never disagree.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel, ValidationError

# The ephemeral Prefect server otherwise tries to send telemetry, which fails without network
# and fills the log with errors. A user's own setting wins.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# (field of AtlasSettings, flag prefix, renamed flags) for each nested settings group.
GROUPS = (
    ("model", "", {"name": "model"}),
    ("directions", "", {}),
    ("engine", "", {}),
    ("clustering", "cluster-", {}),
    ("evaluation", "eval-", {}),
)
TOP_LEVEL = ("store", "evaluate", "runner", "dask_address", "dask_workers", "threads", "report_dir")
NONE_WORDS = {"none", "null", ""}


def _allows_none(annotation) -> bool:
    return type(None) in typing.get_args(annotation)


def _is_list(annotation) -> bool:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_list(a) for a in args)
    return typing.get_origin(annotation) is list


def _choices(annotation):
    """Literal values a flag takes, when its type is a plain Literal (or a list of one)."""
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return None


def _add_field(parser: argparse.ArgumentParser, model: type[BaseModel], name: str, flag: str, dest: str) -> None:
    field = model.model_fields[name]
    default = field.get_default(call_default_factory=True)
    shown = json.dumps(default) if not isinstance(default, BaseModel) else "..."
    # argparse expands %-formats in help text, so literal percent signs are doubled.
    help_text = f"{field.description} (default: {shown})".replace("%", "%%")
    kwargs: dict = {"dest": dest, "default": argparse.SUPPRESS, "help": help_text}
    if field.annotation is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        if _is_list(field.annotation):
            kwargs["nargs"] = "*"
        choices = _choices(field.annotation)
        if choices and not _allows_none(field.annotation):
            kwargs["choices"] = choices
        kwargs["metavar"] = name.upper()
    parser.add_argument(f"--{flag}", **kwargs)


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    from refusal_atlas.tasks.settings import AtlasSettings

    parser.add_argument(
        "--settings", type=Path, help="A JSON file of AtlasSettings to start from; flags override it."
    )
    parser.add_argument(
        "--prompts", nargs="+", dest="prompts", default=argparse.SUPPRESS, metavar="SOURCE",
        help=AtlasSettings.model_fields["prompts"].description
        + " Each as PATH[#limit=N&seed=S&label=harmful|harmless&category=C].",
    )
    for name in TOP_LEVEL:
        _add_field(parser, AtlasSettings, name, name.replace("_", "-"), name)
    parser.add_argument("--dask", action="store_const", const="dask", dest="runner", default=argparse.SUPPRESS,
                        help="Shorthand for --runner dask.")
    for group, prefix, renamed in GROUPS:
        model = AtlasSettings.model_fields[group].annotation
        section = parser.add_argument_group(group)
        for name in model.model_fields:
            flag = renamed.get(name, prefix + name.replace("_", "-"))
            _add_field(section, model, name, flag, f"{group}.{name}")


def settings_from_args(args: argparse.Namespace):
    """AtlasSettings from a --settings file (if any) overridden by the flags given."""
    from refusal_atlas.tasks.prompts.sources import parse_source
    from refusal_atlas.tasks.settings import AtlasSettings

    data: dict = json.loads(args.settings.read_text()) if getattr(args, "settings", None) else {}
    for key, value in vars(args).items():
        if key in ("settings", "command", "func"):
            continue
        if key == "prompts":
            data["prompts"] = [parse_source(spec).model_dump() for spec in value]
            continue
        group, _, name = key.rpartition(".")
        target = data.setdefault(group, {}) if group else data
        field_model = AtlasSettings.model_fields[group].annotation if group else AtlasSettings
        annotation = field_model.model_fields[name or key].annotation
        if isinstance(value, str) and value.lower() in NONE_WORDS and _allows_none(annotation):
            value = None
        if isinstance(value, list) and not value and _allows_none(annotation):
            value = None
        target[name or key] = value
    return AtlasSettings.model_validate(data)


def _cmd_run(args: argparse.Namespace) -> int:
    from refusal_atlas.flows.atlas import refusal_atlas
    from refusal_atlas.flows.failures import explain, short_tracebacks

    try:
        settings = settings_from_args(args)
    except ValidationError as err:
        print(f"refusal-atlas: invalid settings:\n{err}", file=sys.stderr)
        return 2
    # A failure the user can act on (bad input, a lost API, a full disk, a busy or damaged store)
    # ends in one paragraph that says what is kept and how to resume; anything else is a bug and
    # keeps its traceback.
    try:
        with short_tracebacks():
            result = refusal_atlas(settings)
    except Exception as err:
        failure = explain(err, settings.store)
        if failure is None:
            raise
        print(f"refusal-atlas: {failure.message}", file=sys.stderr)
        args.exit_at_once = failure.api_lost
        return failure.code
    print(run_summary(result))
    return 0


def run_summary(result: dict) -> str:
    """What a person wants to read when a run ends: counts, clusters, examples, where things are."""
    lines = [
        "",
        f"prompts {result['prompts']}: {result['new']} new; {result['computed']} computed, "
        f"{result['cached']} cached, {result['stored']} already stored, {result['failed']} failed",
    ]
    for failure in result["extraction"]["failures"][:5]:
        lines.append(f"  failed: {failure['reason']}")
    clusters = result["clusters"]
    for space, info in clusters["spaces"].items():
        marker = " (defines the cluster directions)" if space == clusters["chosen"] else ""
        noise = info.get("noise_share")
        lines.append(f"{space} directions{marker}: {info['n_clusters']} clusters of {info['n_points']} prompts, "
                     f"noise {noise:.0%}" if noise is not None else f"{space}: {info['n_clusters']} clusters")
        for row in (r for r in result["cluster_rows"] if r["space"] == space):
            lines.append(f"  cluster {row['cluster']}: {row['size']} prompts, layer {row['layer']}, "
                         f"top categories {row['top_categories'] or '-'}")
            lines.append(f"    e.g. {row['examples']}")
    lines.append("findings:")
    lines.extend(f"  - {finding}" for finding in result["findings"])
    lines.append(f"store:  {result['store']}  (refusal-atlas inspect {result['store']})")
    lines.append(f"report: {result['report']}")
    return "\n".join(lines)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from refusal_atlas.tasks.steps.inspection import inspect_store

    text, healthy = inspect_store(args.store, verify=args.verify, repair=args.repair)
    print(text)
    return 0 if healthy else 1


def _cmd_migrate(args: argparse.Namespace) -> int:
    from refusal_atlas.storage.migrate import migrate

    counts = migrate(args.old, args.new, args.block_rows)
    print(f"migrated {counts['prompts']} prompts ({counts['done']} done, {counts['failed']} failed) into "
          f"{counts['store']} in blocks of {counts['block_rows']} rows; {args.old} is unchanged. The next "
          "run on the new store computes only what is missing, and its concept vectors and clusters.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refusal-atlas",
        description="Find input-specific refusal directions in a chat LLM and cluster them.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="Run the refusal_atlas flow once.",
                              description="Run the refusal_atlas flow once (Prefect's ephemeral mode "
                              "unless PREFECT_API_URL points at a server).")
    add_settings_arguments(run)
    run.set_defaults(func=_cmd_run)
    inspect = commands.add_parser("inspect", help="Print what an atlas store holds.")
    inspect.add_argument("store", help="Store path or fsspec URL.")
    inspect.add_argument("--verify", action="store_true",
                         help="Read every chunk that matters and list those that are damaged (exit 1 if any).")
    inspect.add_argument("--repair", action="store_true",
                         help="Verify, then mark the rows of damaged chunks for recomputation and remove damaged "
                         "groups, so that the next run computes them again.")
    inspect.set_defaults(func=_cmd_inspect)
    migrate = commands.add_parser("migrate", help="Copy a store of the first layout (one chunk per row) "
                                  "into a new store in blocks of rows.")
    migrate.add_argument("old", help="The old store (read only).")
    migrate.add_argument("new", help="Path of the new store (must not exist).")
    migrate.add_argument("--block-rows", type=int, default=None,
                         help="Rows per block (default: chosen from the row size, 512 for the default model).")
    migrate.set_defaults(func=_cmd_migrate)
    from refusal_atlas.flows import organism_cli as organism_command
    from refusal_atlas.flows import serve as serve_command

    # Commands that live in their own module: each gives configure_parser(parser) and main(args).
    for name, module, help_text, description in (
        ("serve", serve_command, "Serve the flow on a cron or interval schedule (needs a Prefect server).",
         "Register a deployment of refusal_atlas with the Prefect server at PREFECT_API_URL "
         "and run its scheduled runs until interrupted (which pauses the schedule)."),
        ("organism", organism_command, "Fine-tune a refusal model organism with planted refusal types.",
         "Fine-tune a small chat model so that it refuses planted harm categories, each in "
         "its own style, and save it as a model directory the atlas loads by path."),
    ):
        command = commands.add_parser(name, help=help_text, description=description)
        module.configure_parser(command)
        command.set_defaults(func=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code = args.func(args)
    if getattr(args, "exit_at_once", False) and argv is None:
        # The Prefect API is gone: at exit, Prefect would try to deliver every queued event
        # again, several seconds each, for minutes. The store is complete (every write has
        # returned), so the command ends now; only as the command (argv None), never under a
        # caller of main() that keeps its own interpreter.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
