"""`refusal-atlas organism`: a flag for every OrganismSettings field, and the command itself.

Kept apart from flows.organism so that building the CLI's parser imports only the settings;
the flow, torch and the training code are imported when the command runs.
"""

from __future__ import annotations

import argparse
import json

from refusal_atlas.flows.flags import add_settings_flags, settings_from_args, settings_or_report
from refusal_atlas.tasks.organism.settings import OrganismSettings

HELP = "Fine-tune a refusal model organism with planted refusal types."
DESCRIPTION = ("Fine-tune a small chat model so that it refuses planted harm categories, each in "
               "its own style, and save it as a model directory the atlas loads by path.")


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags for every OrganismSettings field (unset flags keep the settings' defaults)."""
    add_settings_flags(parser, OrganismSettings)
    parser.add_argument(
        "--require-criteria", action="store_true",
        help="Exit with status 1 unless the organism meets every criterion of issue 15.",
    )
    return parser


def organism_settings(args: argparse.Namespace) -> OrganismSettings:
    """OrganismSettings from the --settings file (if any) and the flags given; FlagError if invalid."""
    return settings_from_args(OrganismSettings, args)


def main(args: argparse.Namespace) -> int:
    settings = settings_or_report(OrganismSettings, args, "organism")
    if settings is None:
        return 2

    from refusal_atlas.flows.organism import organism

    result = organism(settings)
    print(json.dumps(result, indent=2))
    met = all(c["met"] for c in result["criteria"].values())
    print(f"organism adapter saved at {result['adapter_dir']}; criteria {'all met' if met else 'NOT all met'}")
    return 0 if met or not args.require_criteria else 1
