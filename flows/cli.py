"""The `refusal-atlas` command line: one subcommand per module of COMMANDS.

Each command module gives HELP, DESCRIPTION, configure_parser(parser) and main(args); the flags
of settings models come from flows/flags.py, which imports none of the commands, so no command
module imports this one. Building the parser imports no command's work (the flows, torch).
"""

from __future__ import annotations

import argparse
import os
import sys

from refusal_atlas.flows import export_cli, inspect_cli, migrate_cli, organism_cli, run_cli, serve

COMMANDS = (
    ("run", run_cli), ("inspect", inspect_cli), ("migrate", migrate_cli), ("serve", serve), ("organism", organism_cli),
    ("export", export_cli.EXPORT), ("steer", export_cli.STEER), ("abliterate", export_cli.ABLITERATE),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refusal-atlas",
        description="Find input-specific refusal directions in a chat LLM and cluster them.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS:
        command = commands.add_parser(name, help=module.HELP, description=module.DESCRIPTION)
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
