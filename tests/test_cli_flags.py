"""Every field of every settings model has a flag, and that flag parses a non-default value.

The values are made per type (an int plus one, a float doubled plus a half, a bool flipped,
another Literal choice, a list of one valid item, a dict as JSON and as KEY=VALUE, None for an
optional field); fields whose validators reject the generic value are in SPECIAL. The expected
settings are the defaults with that one field changed, validated by pydantic, so a flag that
parses into the wrong field, or not at all, fails.
"""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from refusal_atlas.flows.cli import build_parser, main
from refusal_atlas.flows.flags import FlagError, flags_of, settings_from_args
from refusal_atlas.tasks.organism.settings import OrganismSettings
from refusal_atlas.tasks.settings import AtlasSettings

FLOWS = Path(__file__).resolve().parents[1] / "flows"

# (command, the arguments it needs besides settings, its settings model).
COMMANDS = (
    ("run", (), AtlasSettings),
    ("serve", ("--interval", "5"), AtlasSettings),
    ("organism", (), OrganismSettings),
)

# Fields whose validators reject the generic value: (model, dotted path) -> [(values, expected)].
SPECIAL = {
    ("AtlasSettings", "clustering.heldout_fraction"): [(["0.25"], 0.25)],
    ("OrganismSettings", "test_fraction"): [(["0.25"], 0.25)],
    ("OrganismSettings", "decision_weight"): [(["0.25"], 0.25)],
    ("OrganismSettings", "train_share"): [(["0.5"], 0.5)],
    ("OrganismSettings", "probe_min_recall"): [(["0.5"], 0.5)],
    ("OrganismSettings", "mediation_shrinkage"): [(["0.3"], 0.3)],
    # A limit makes the value differ from any default list of sources.
    ("OrganismSettings", "sources"): [(["default#limit=5"], ["default#limit=5"])],
    ("OrganismSettings", "planted"): [
        (["weapons=I cannot."], [{"category": "weapons", "style": "I cannot."}]),
        (['{"category": "weapons", "style": "I cannot."}', "privacy=I'm sorry."],
         [{"category": "weapons", "style": "I cannot."}, {"category": "privacy", "style": "I'm sorry."}]),
    ],
    ("AtlasSettings", "prompts"): [
        (["default#limit=3&seed=2"], [{"path": "default", "limit": 3, "seed": 2}]),
        (['{"path": "default", "label": "harmful"}', "extra.txt#label=harmless"],
         [{"path": "default", "label": "harmful"}, {"path": "extra.txt", "label": "harmless"}]),
    ],
}


@functools.cache
def parser():
    """One parser for all cases: parse_args leaves a parser as it was, and building one costs."""
    return build_parser()


def leaf_paths(model: type[BaseModel], path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    """Every leaf field of a model, found here independently of flows/flags.py."""
    leaves = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            leaves += leaf_paths(field.annotation, (*path, name))
        else:
            leaves.append(((*path, name), field))
    return leaves


def _members(annotation) -> tuple[list, bool]:
    """The members of a union other than None, and whether None was one."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        return [a for a in args if a is not type(None)], type(None) in args
    return [annotation], False


def _scalar_values(annotation, default) -> list[tuple[str, object]]:
    """(text, value) pairs of a scalar type that differ from the default."""
    if typing.get_origin(annotation) is typing.Literal:
        other = next(v for v in typing.get_args(annotation) if v != default)
        return [(str(other), other)]
    if annotation is int:
        value = default + 1 if isinstance(default, int) else 3
        return [(str(value), value)]
    if annotation is float:
        value = default * 2 + 0.5 if isinstance(default, float) else 0.5
        return [(str(value), value)]
    if annotation is str:
        return [("something-else", "something-else")]
    raise AssertionError(f"no non-default value for {annotation}: add the field to SPECIAL")


def _list_item(annotation, default: list) -> tuple[str, object]:
    if typing.get_origin(annotation) is typing.Literal:
        other = next(v for v in typing.get_args(annotation) if v not in default)
        return other, other
    return {int: ("1", 1), str: ("something-else", "something-else")}[annotation]


def cases(model: type[BaseModel], path: tuple[str, ...], field) -> list[tuple[list[str] | None, object]]:
    """(the values after the flag, or None for a bool, and the field's expected value)."""
    if (model.__name__, ".".join(path)) in SPECIAL:
        return SPECIAL[model.__name__, ".".join(path)]
    # A default that depends on other fields is read with theirs at their defaults.
    defaults = model().model_dump() if field.default_factory_takes_validated_data else None
    default = field.get_default(call_default_factory=True, validated_data=defaults)
    members, optional = _members(field.annotation)
    found: list = [(["none"], None)] if optional and default is not None else []
    for member in members:
        origin = typing.get_origin(member)
        if member is bool:
            found.append((None, not default))
        elif origin is list:
            text, value = _list_item(typing.get_args(member)[0], default or [])
            found.append(([text], [value]))
        elif origin is dict:
            found += [(['{"a": "b"}'], {"a": "b"}), (["a=b", "c=d=e"], {"a": "b", "c": "d=e"})]
        else:
            found += [([text], value) for text, value in _scalar_values(member, default)]
    return found


def _expected(model: type[BaseModel], path: tuple[str, ...], value) -> BaseModel:
    data = model().model_dump()
    # Fields whose default depends on others are left to follow them, as they do when a flag is left out.
    for name, field in model.model_fields.items():
        if field.default_factory_takes_validated_data and path[0] != name:
            del data[name]
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return model.model_validate(data)


ALL_CASES = [
    pytest.param(command, needs, model, path, values, value,
                 id=f"{command}-{'.'.join(path)}-{n}")
    for command, needs, model in COMMANDS
    for path, field in leaf_paths(model)
    for n, (values, value) in enumerate(cases(model, path, field))
]


@pytest.mark.parametrize(("command", "needs", "model", "path", "values", "value"), ALL_CASES)
def test_every_flag_parses_a_non_default_value(command, needs, model, path, values, value):
    flag = next(f for f in flags_of(model) if f.path == path)
    if values is None:
        argv = [f"--{flag.name}" if value else f"--no-{flag.name}"]
    else:
        argv = [flag.option, *values]
    settings = settings_from_args(model, parser().parse_args([command, *needs, *argv]))
    assert settings == _expected(model, path, value)
    assert settings != model(), f"{' '.join(argv)} gave the default settings"


@pytest.mark.parametrize(("command", "needs", "model"), COMMANDS)
def test_every_optional_field_takes_none(command, needs, model):
    optional = [f for f in flags_of(model) if f.optional]
    assert optional or model is OrganismSettings
    for flag in optional:
        for word in ("none", "null"):
            settings = settings_from_args(model, parser().parse_args([command, *needs, flag.option, word]))
            assert settings == _expected(model, flag.path, None), f"{flag.option} {word}"


@pytest.mark.parametrize(("command", "needs", "model"), COMMANDS)
def test_every_field_has_a_flag_of_the_command(command, needs, model):
    """Fails when a field is added to a settings model and the generator skips it."""
    subparser = build_parser()._subparsers._group_actions[0].choices[command]
    by_path = {flag.path: flag for flag in flags_of(model)}
    for path, _ in leaf_paths(model):
        assert path in by_path, f"{model.__name__}.{'.'.join(path)} has no flag"
        assert by_path[path].option in subparser._option_string_actions, by_path[path].option
    assert settings_from_args(model, build_parser().parse_args([command, *needs])) == model()


def test_flag_names_of_the_atlas_settings_are_kept():
    """The README and the tests spell these; renaming one breaks users' commands."""
    names = {flag.name for flag in flags_of(AtlasSettings)}
    assert {"model", "layers", "steps", "store", "prompts", "evaluate", "dtype", "trust-remote-code",
            "gradient-labels", "max-batch", "cluster-min-cluster-size", "cluster-pca-dim", "cluster-layer",
            "eval-alpha", "eval-n-generate", "eval-substring-list", "dask-address", "report-dir"} <= names
    assert len(names) == len(flags_of(AtlasSettings)), "two fields share a flag"


def test_organism_train_dtype_and_category_map():
    parse = build_parser().parse_args
    assert settings_from_args(OrganismSettings, parse(["organism", "--train-dtype", "bfloat16"])).train_dtype == "bfloat16"
    assert settings_from_args(OrganismSettings, parse(["organism", "--train-dtype", "float32"])).train_dtype == "float32"
    for given in (['{"a": "b"}'], ["a=b"]):
        settings = settings_from_args(OrganismSettings, parse(["organism", "--category-map", *given]))
        assert settings.category_map == {"a": "b"}
    with pytest.raises(SystemExit):
        parse(["organism", "--train-dtype", "float16"])
    with pytest.raises(SystemExit):
        parse(["organism", "--category-map", "a"])


def test_plant_and_dask_shorthands():
    parse = build_parser().parse_args
    args = parse(["organism", "--plant", "weapons=I cannot.", "--plant", "privacy=I'm sorry."])
    assert settings_from_args(OrganismSettings, args).styles == {"weapons": "I cannot.", "privacy": "I'm sorry."}
    assert settings_from_args(AtlasSettings, parse(["run", "--dask"])).runner == "dask"
    with pytest.raises(SystemExit):
        parse(["organism", "--plant", "no equals sign"])


@pytest.mark.parametrize(("command", "needs", "model"), COMMANDS)
def test_an_unknown_flag_is_an_error(command, needs, model, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, *needs, "--no-such-flag", "1"])
    assert exit_.value.code == 2 and "--no-such-flag" in capsys.readouterr().err


def test_a_settings_file_is_overridden_by_flags(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"store": "a.zarr", "directions": {"steps": 7, "eta": 0.2}}))
    args = build_parser().parse_args(["run", "--settings", str(path), "--steps", "9"])
    settings = settings_from_args(AtlasSettings, args)
    assert (settings.store, settings.directions.steps, settings.directions.eta) == ("a.zarr", 9, 0.2)
    path.write_text(json.dumps({"epochs": 3}))
    args = build_parser().parse_args(["organism", "--settings", str(path), "--lora-rank", "4"])
    assert settings_from_args(OrganismSettings, args).model_dump() == OrganismSettings(epochs=3, lora_rank=4).model_dump()


def test_invalid_values_are_one_paragraph_naming_the_flags(capsys):
    args = build_parser().parse_args(["run", "--steps", "0", "--cluster-layer", "middle", "--prompts", "x#bad=1"])
    with pytest.raises(FlagError) as err:
        settings_from_args(AtlasSettings, args)
    message = str(err.value)
    assert "\n" not in message
    for flag in ("--steps", "--cluster-layer", "--prompts"):
        assert f"{flag}:" in message
    assert main(["run", "--eval-n-random", "101"]) == 2
    printed = capsys.readouterr().err
    assert printed.startswith("refusal-atlas run: invalid settings: --eval-n-random:") and "Traceback" not in printed


def test_help_shows_descriptions_and_defaults():
    subparser = build_parser()._subparsers._group_actions[0].choices["organism"]
    text = " ".join(subparser.format_help().split())
    assert "5% linear warm-up" in text and "(default: 0.0005)" in text
    assert "--plant CATEGORY=STYLE" in text and "--train-dtype {float32,bfloat16}" in text


def test_building_the_parser_imports_no_torch_and_no_flow():
    code = ("import sys; from refusal_atlas.flows.cli import build_parser; parser = build_parser(); "
            "[c.format_help() for c in parser._subparsers._group_actions[0].choices.values()]; "
            "bad = sorted({'torch', 'transformers', 'refusal_atlas.flows.atlas', 'refusal_atlas.flows.organism'} "
            "& set(sys.modules)); print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("command", ["run", "serve", "organism"])
def test_help_of_the_installed_command(command):
    cli = Path(sys.executable).parent / "refusal-atlas"
    done = subprocess.run([str(cli), command, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--settings FILE" in done.stdout, done.stderr


def test_no_command_module_imports_the_cli():
    """flows/cli.py imports the command modules; an import back would be a loop."""
    for path in FLOWS.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {f"{node.module}.{alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                     for alias in node.names}
        assert "refusal_atlas.flows.cli" not in imported, f"{path.name} imports flows/cli.py"
