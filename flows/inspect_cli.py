"""`refusal-atlas inspect`: print what an atlas store holds, verify it, or repair it."""

from __future__ import annotations

import argparse

HELP = "Print what an atlas store holds."
DESCRIPTION = "Print what an atlas store holds; --verify and --repair check its chunks."


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="Store path or fsspec URL.")
    parser.add_argument("--verify", action="store_true",
                        help="Read every chunk that matters and list those that are damaged (exit 1 if any).")
    parser.add_argument("--repair", action="store_true",
                        help="Verify, then mark the rows of damaged chunks for recomputation and remove damaged "
                        "groups, so that the next run computes them again.")


def main(args: argparse.Namespace) -> int:
    from refusal_atlas.tasks.steps.inspection import inspect_store

    text, healthy = inspect_store(args.store, verify=args.verify, repair=args.repair)
    print(text)
    return 0 if healthy else 1
