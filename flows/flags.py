"""One path from a pydantic settings model to argparse flags, and from the parsed flags back.

Every command that takes settings (`run`, `serve`, `organism`) builds its flags here, so a field
added to a settings model gets a flag, its help and its validation without further code. argparse
only splits the command line into strings; pydantic converts and validates them, so a bad value
is reported once, by the same rules as a settings file or the Prefect UI's form.

Names: a field `max_batch` is `--max-batch`; the fields of a nested model field `clustering` are
`--clustering-<name>`, in an argparse group of that name, unless the field declares another
prefix in its json_schema_extra (`{"cli_prefix": "cluster-"}`; "" leaves the names bare). A field
may declare its whole flag (`{"cli_flag": "model"}`), shorthands that set one value
(`{"cli_shorthands": {"dask": "dask"}}`: `--dask` is `--runner dask`), a flag that adds one list
item per use (`{"cli_repeat": "plant"}`), and the metavar and text form shown in help
(`cli_metavar`, `cli_form`).

Values: a bool is --x/--no-x; a list takes its items after the flag (a Literal's as choices); a
dict takes KEY=VALUE items or one JSON object; an item of a list of models is a JSON object, or
FIELD1=FIELD2 for a two-field model, or text that the model parses itself; a field that may be
None takes 'none' (or 'null', or nothing after a list flag). Help is the field's description
with its default.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from annotated_types import MinLen
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

from refusal_atlas.flows.flag_errors import validation_paragraph

#: Words that mean "no value" for a field that may be None (an empty string too).
NONE_WORDS = frozenset({"none", "null", ""})
#: The argparse dest of `--settings FILE`.
SETTINGS_FILE_DEST = "settings_file"


class FlagError(ValueError):
    """Flags that do not give valid settings; the message is one paragraph naming the flags."""


@dataclass(frozen=True)
class Flag:
    """One leaf field of a settings model, the flag that sets it and what its type asks."""

    path: tuple[str, ...]  # field names from the root model down to this field
    name: str  # the flag without its leading "--"
    field: FieldInfo
    group: str | None  # the nested field whose argparse group holds the flag; None at the top
    dest: str  # the argparse dest: the root model's name keeps two models on one parser apart
    kind: str  # "bool", "list", "dict", "model" (a JSON object) or "scalar"
    item: object  # the type of a list's items, else of the value, None taken out
    optional: bool  # whether None is allowed
    extra: dict  # the field's json_schema_extra, where the cli_ keys are declared

    @property
    def option(self) -> str:
        return f"--{self.name}"


def flags_of(model: type[BaseModel]) -> list[Flag]:
    """Every leaf field of `model` with its flag, nested models flattened under their prefix."""
    return list(_walk(model, model.__name__, (), "", None))


def _walk(model: type[BaseModel], root: str, path: tuple[str, ...], prefix: str, group: str | None):
    for name, field in model.model_fields.items():
        # A callable json_schema_extra edits the JSON schema and declares no flags.
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        spelt = name.replace("_", "-")
        if _model_class(field.annotation):
            inner_prefix = extra.get("cli_prefix", f"{prefix}{spelt}-")
            yield from _walk(field.annotation, root, (*path, name), inner_prefix, ".".join((*path, name)))
            continue
        inner, optional = _without_none(field.annotation)
        yield Flag((*path, name), extra.get("cli_flag", prefix + spelt), field, group,
                   f"{root}:{'.'.join((*path, name))}", *_kind(inner), optional, extra)


def _kind(annotation) -> tuple[str, object]:
    """What argparse is to collect for a type (None taken out), and the type of one value."""
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return "bool", bool
    if origin is list:
        return "list", typing.get_args(annotation)[0]
    if dict in (origin, annotation):
        return "dict", annotation
    return ("model" if _model_class(annotation) else "scalar"), annotation


def _without_none(annotation) -> tuple[object, bool]:
    """The annotation with None taken out of a union, and whether None was in it."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        rest = tuple(a for a in args if a is not type(None))
        if len(rest) < len(args):
            return (rest[0] if len(rest) == 1 else typing.Union[rest]), True
    return annotation, False


def _string_choices(annotation) -> list[str] | None:
    """The values of a Literal of strings; None for any other type (pydantic checks those)."""
    values = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else ()
    return list(values) if values and all(isinstance(v, str) for v in values) else None


def _model_class(annotation) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid JSON ({err.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is JSON but not an object ({{...}})")
    return value


def _dict_item(text: str) -> dict:
    """One JSON object, or one KEY=VALUE pair; the pairs of a flag are merged into one mapping."""
    if text.lstrip().startswith("{"):
        return _json_object(text)
    key, equals, value = text.partition("=")
    if not equals:
        raise argparse.ArgumentTypeError(f"write KEY=VALUE or one JSON object, not {text!r}")
    return {key: value}


def _item_parser(model: type[BaseModel]):
    """Parse one item of a list of `model`: a JSON object, FIELD1=FIELD2 for a two-field model,
    or else the text itself, for models that accept a text form of their own."""
    names = list(model.model_fields)

    def parse(text: str):
        if text.lstrip().startswith("{"):
            return _json_object(text)
        if len(names) != 2:
            return text
        first, equals, second = text.partition("=")
        if not equals:
            raise argparse.ArgumentTypeError(
                f"write {names[0].upper()}={names[1].upper()} or a JSON object, not {text!r}")
        return {names[0]: first, names[1]: second}

    # argparse names the type in its error messages ("invalid <name> value").
    parse.__name__ = model.__name__
    return parse


def _item_metavar(flag: Flag) -> str:
    model = _model_class(flag.item)
    if model and len(model.model_fields) == 2:
        return "=".join(name.upper() for name in model.model_fields)
    return flag.extra.get("cli_metavar") or ("JSON" if model else flag.path[-1].upper())


# --- building the parser --------------------------------------------------------------------------


def _help(flag: Flag, form: str = "") -> str:
    if flag.field.default_factory_takes_validated_data:
        # A default that depends on other fields (its description says how) has no one value to show.
        shown = "default: see above"
    else:
        default = flag.field.get_default(call_default_factory=True)
        shown = "required" if default is PydanticUndefined else f"default: {json.dumps(to_jsonable_python(default))}"
    text = " ".join(part for part in (flag.field.description or "", form.strip(), f"({shown})") if part)
    # argparse expands %-formats in help, so a literal percent sign ("5% warm-up") is doubled.
    return text.replace("%", "%%")


def _arguments(flag: Flag) -> dict:
    """The add_argument keywords of a flag, from its field's type."""
    form = flag.extra.get("cli_form", "")
    none_note = " Give 'none' for no value." if flag.optional else ""
    if flag.kind == "bool":
        return {"action": argparse.BooleanOptionalAction, "help": _help(flag, form)}
    if flag.kind == "list":
        # An empty list is a value (no held-out controls), unless the field needs an item.
        needs_one = any(isinstance(m, MinLen) and m.min_length > 0 for m in flag.field.metadata)
        arguments = {"nargs": "+" if needs_one else "*", "metavar": _item_metavar(flag)}
        if _model_class(flag.item):
            arguments["type"] = _item_parser(flag.item)
            form = form or f"Each item as {arguments['metavar']} or a JSON object."
        elif _string_choices(flag.item):
            # Without a metavar, argparse shows the choices themselves in usage and help.
            arguments = {"nargs": arguments["nargs"], "choices": _string_choices(flag.item)}
        none_note = " Give 'none' (or the flag alone) for none." if flag.optional else ""
        return {**arguments, "help": _help(flag, form + none_note)}
    if flag.kind == "dict":
        return {"nargs": "+", "type": _dict_item, "metavar": "KEY=VALUE",
                "help": _help(flag, (form or "KEY=VALUE items or one JSON object.") + none_note)}
    if flag.kind == "model":
        return {"type": _json_object, "metavar": "JSON", "help": _help(flag, (form or "A JSON object.") + none_note)}
    arguments = {"metavar": flag.extra.get("cli_metavar") or flag.path[-1].upper()}
    if _string_choices(flag.item) and not flag.optional:
        arguments = {"choices": _string_choices(flag.item)}
    return {**arguments, "help": _help(flag, form + none_note)}


def add_settings_flags(parser: argparse.ArgumentParser, model: type[BaseModel], *,
                       settings_file: bool = True) -> list[Flag]:
    """Add a flag for every field of `model` to `parser` (and `--settings FILE` when asked).

    Flags left out keep the value of the settings file, or else the model's default: argparse
    records only the flags given. Returns the flags added.
    """
    if settings_file:
        parser.add_argument("--settings", type=Path, dest=SETTINGS_FILE_DEST, metavar="FILE",
                            help=f"A JSON file of {model.__name__} to start from; flags override it.")
    groups: dict[str | None, argparse._ActionsContainer] = {None: parser}
    flags = flags_of(model)
    for flag in flags:
        if flag.group not in groups:
            groups[flag.group] = parser.add_argument_group(flag.group)
        target = groups[flag.group]
        target.add_argument(flag.option, dest=flag.dest, default=argparse.SUPPRESS, **_arguments(flag))
        for shorthand, value in flag.extra.get("cli_shorthands", {}).items():
            target.add_argument(f"--{shorthand}", dest=flag.dest, action="store_const", const=value,
                                default=argparse.SUPPRESS, help=f"Shorthand for {flag.option} {value}.")
        if "cli_repeat" in flag.extra:
            metavar = _item_metavar(flag)
            target.add_argument(
                f"--{flag.extra['cli_repeat']}", dest=flag.dest, action="append", default=argparse.SUPPRESS,
                type=_item_parser(flag.item) if _model_class(flag.item) else str, metavar=metavar,
                help=f"One item of {flag.option}, as {metavar}; repeat the flag for more.")
    return flags


# --- from the parsed flags back to settings -------------------------------------------------------


def _value(flag: Flag, raw):
    """What a flag hands to pydantic: None for an optional field's none words, one dict for items."""
    if flag.optional and isinstance(raw, str) and raw.strip().lower() in NONE_WORDS:
        return None
    if flag.optional and isinstance(raw, list) and (not raw or raw in (["none"], ["null"])):
        return None
    if flag.kind == "dict":
        return {key: value for item in raw for key, value in item.items()}
    return raw


def _read_settings_file(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FlagError(f"--settings {path}: cannot be read as JSON ({err}).") from None
    if not isinstance(data, dict):
        raise FlagError(f"--settings {path}: holds JSON but not an object of settings.")
    return data


def settings_from_args(model: type[BaseModel], args: argparse.Namespace):
    """`model` from the --settings file (if any) and the flags given; FlagError if not valid."""
    given = vars(args)
    data = _read_settings_file(given[SETTINGS_FILE_DEST]) if given.get(SETTINGS_FILE_DEST) else {}
    flags = flags_of(model)
    for flag in (f for f in flags if f.dest in given):
        node = data
        for key in flag.path[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[flag.path[-1]] = _value(flag, given[flag.dest])
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise FlagError(validation_paragraph(err, flags)) from None


def settings_or_report(model: type[BaseModel], args: argparse.Namespace, command: str):
    """`settings_from_args`, or None after printing its one-paragraph error as `command`'s
    (the caller then exits with status 2): every command reports bad flags the same way."""
    try:
        return settings_from_args(model, args)
    except FlagError as err:
        print(f"refusal-atlas {command}: {err}", file=sys.stderr)
        return None
