"""`refusal-atlas migrate`: copy a store of the first layout (one chunk per row) into blocks."""

from __future__ import annotations

import argparse

HELP = "Copy a store of the first layout (one chunk per row) into a new store in blocks of rows."
DESCRIPTION = ("Copy the prompts and the done and failed rows of a schema-1 store into a new store in "
               "blocks of rows. The old store is only read; concept vectors and clusters are recomputed "
               "by the next run on the new store.")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", help="The old store (read only).")
    parser.add_argument("new", help="Path of the new store (must not exist).")
    parser.add_argument("--block-rows", type=int, default=None,
                        help="Rows per block (default: chosen from the row size, 512 for the default model).")


def main(args: argparse.Namespace) -> int:
    from refusal_atlas.storage.migrate import migrate

    counts = migrate(args.old, args.new, args.block_rows)
    print(f"migrated {counts['prompts']} prompts ({counts['done']} done, {counts['failed']} failed) into "
          f"{counts['store']} in blocks of {counts['block_rows']} rows; {args.old} is unchanged. The next "
          "run on the new store computes only what is missing, and its concept vectors and clusters.")
    return 0
