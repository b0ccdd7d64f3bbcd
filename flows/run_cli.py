"""`refusal-atlas run`: one run of the `refusal_atlas` flow, with a flag for every AtlasSettings field.

The flags come from flows/flags.py, as serve's do; this module imports neither the flow nor
torch until the command runs, so that building the parser (`--help`, `inspect`) stays fast.
"""

from __future__ import annotations

import argparse
import sys

from refusal_atlas.flows.flags import add_settings_flags, settings_from_args, settings_or_report

HELP = "Run the refusal_atlas flow once."
DESCRIPTION = ("Run the refusal_atlas flow once (Prefect's ephemeral mode unless PREFECT_API_URL "
               "points at a server).")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from refusal_atlas.tasks.settings import AtlasSettings

    add_settings_flags(parser, AtlasSettings)


def atlas_settings(args: argparse.Namespace):
    """AtlasSettings from the --settings file (if any) and the flags given; FlagError if invalid."""
    from refusal_atlas.tasks.settings import AtlasSettings

    return settings_from_args(AtlasSettings, args)


def main(args: argparse.Namespace) -> int:
    # Settings first: a mistake in a flag is reported before the flow and torch are imported.
    from refusal_atlas.tasks.settings import AtlasSettings

    settings = settings_or_report(AtlasSettings, args, "run")
    if settings is None:
        return 2
    # Then the prompt files: a missing file or a malformed line is reported in a second or two,
    # before Prefect's server starts and the model loads (tens of seconds). The flow reads them
    # again at registration, so a file edited in between is still read as it is then.
    from refusal_atlas.flows.failures import explain, short_tracebacks
    from refusal_atlas.tasks.prompts.raw import PromptFileError
    from refusal_atlas.tasks.prompts.records import load_prompts

    try:
        load_prompts(settings.prompts)
    except PromptFileError as err:
        failure = explain(err, settings.store)
        print(f"refusal-atlas: {failure.message}", file=sys.stderr)
        return failure.code
    from refusal_atlas.flows.atlas import refusal_atlas

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
    lines = ["", *verdict_summary(result.get("verdict"))]
    lines += [
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
            stability = f", {row['stability']}" if row.get("stability") else ""
            lines.append(f"  cluster {row['cluster']}: {row['size']} prompts, layer {row['layer']}{stability}, "
                         f"top categories {row['top_categories'] or '-'}")
            lines.append(f"    e.g. {row['examples']}")
    lines.append("findings:")
    lines.extend(f"  - {finding}" for finding in result["findings"])
    lines.append(f"store:  {result['store']}  (refusal-atlas inspect {result['store']})")
    lines.append(f"report: {result['report']}")
    return "\n".join(lines)


def verdict_summary(verdict: dict | None) -> list[str]:
    """The verdict first: its headline, then each criterion that decides, with its figure."""
    if not verdict:
        return ["Verdict: not reached (evaluation off, no held-out prompts, or null_sets = 0)."]
    lines = [verdict["headline"]]
    for c in verdict["criteria"]:
        mark = "pass" if c["passed"] else "fail"
        lines.append(f"  [{mark if c['decides'] else 'context'}] {c['name']}: {c['figure']}")
    if verdict.get("h0_control"):
        lines.append(f"  h_0 control (not a criterion): {verdict['h0_control']}")
    lines.append("  (cluster directions beating random directions or the difference in means on f is expected "
                 "by construction, not evidence)")
    return lines
