"""`refusal-atlas organism`: flags for every OrganismSettings field, and the command itself.

Kept apart from flows.organism so that building the CLI's parser imports only the settings;
the flow, torch and the training code are imported when the command runs.
"""

from __future__ import annotations

import argparse
import json
import types
import typing

from refusal_atlas.tasks.organism.settings import OrganismSettings, PlantedCategory


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags for every OrganismSettings field (unset flags keep the settings' defaults)."""
    for name, info in OrganismSettings.model_fields.items():
        # argparse formats help strings with %, so a literal one ("5% warm-up") must be doubled.
        help_text = (info.description or "").replace("%", "%%")
        if name == "planted":
            parser.add_argument(
                "--plant", dest="planted", action="append", metavar="CATEGORY=STYLE",
                help=f"{help_text} Repeat for each category; replaces the default three.",
            )
            continue
        kind = info.annotation
        optional = [a for a in typing.get_args(kind) if a is not type(None)]
        if typing.get_origin(kind) in (typing.Union, types.UnionType) and len(optional) == 1:
            kind = optional[0]  # an optional field's flag takes the value's type
        if kind is bool:
            parser.add_argument(_flag(name), dest=name, action="store_const", const=True, help=help_text)
        elif typing.get_origin(kind) is list:
            parser.add_argument(_flag(name), dest=name, nargs="*", metavar="VALUE", help=help_text)
        else:
            parser.add_argument(_flag(name), dest=name, type=kind, metavar=name.split("_")[-1].upper(), help=help_text)
    parser.add_argument(
        "--require-criteria", action="store_true",
        help="Exit with status 1 unless the organism meets every criterion of issue 15.",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> OrganismSettings:
    given = {k: v for k, v in vars(args).items() if k in OrganismSettings.model_fields and v is not None}
    if "planted" in given:
        planted = []
        for item in given["planted"]:
            category, equals, style = item.partition("=")
            if not equals:
                raise SystemExit(f"--plant {item!r}: write CATEGORY=STYLE, e.g. --plant 'weapons_violence=I cannot help with that.'")
            planted.append(PlantedCategory(category=category, style=style))
        given["planted"] = planted
    return OrganismSettings(**given)


def main(args: argparse.Namespace) -> int:
    from refusal_atlas.flows.organism import organism

    settings = settings_from_args(args)
    result = organism(settings)
    print(json.dumps(result, indent=2))
    met = all(c["met"] for c in result["criteria"].values())
    print(f"organism adapter saved at {result['adapter_dir']}; criteria {'all met' if met else 'NOT all met'}")
    return 0 if met or not args.require_criteria else 1
