"""`refusal-atlas serve`: a quick local schedule for the `refusal_atlas` flow.

It registers a deployment with the Prefect server and runs its scheduled runs as subprocesses of
this process, with no work pool or worker, until interrupted (which pauses the schedule). It
needs a real server (`prefect server start` and PREFECT_API_URL): Prefect's ephemeral mode has no
scheduler, so a schedule would never fire there. Runs start in this process's folder, so a
relative store path is relative to it. For a standing nightly schedule on a work pool, use
deployments/prefect.yaml instead.
"""

from __future__ import annotations

import argparse
import sys

from refusal_atlas.flows.flags import add_settings_flags, settings_or_report

DEFAULT_NAME = "refusal-atlas-serve"
HELP = "Serve the flow on a cron or interval schedule (needs a Prefect server)."
DESCRIPTION = ("Register a deployment of refusal_atlas with the Prefect server at PREFECT_API_URL "
               "and run its scheduled runs until interrupted (which pauses the schedule).")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """The settings flags of `refusal-atlas run`, plus the schedule and the deployment's name."""
    from refusal_atlas.tasks.settings import AtlasSettings

    schedule = parser.add_argument_group("schedule (give --cron or --interval)")
    when = schedule.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="EXPR",
                      help="A cron expression, e.g. '0 3 * * *' for 03:00 every night (in --timezone).")
    when.add_argument("--interval", type=_positive_seconds, metavar="SECONDS",
                      help="Run every SECONDS seconds.")
    schedule.add_argument("--timezone", default="UTC",
                          help="IANA time zone of the schedule (default: UTC).")
    schedule.add_argument("--name", default=DEFAULT_NAME,
                          help=f"Name of the served deployment (default: {DEFAULT_NAME}); the UI lists "
                          "it as refusal-atlas/NAME.")
    schedule.add_argument("--limit", type=_positive_int, default=1, metavar="N",
                          help="Most runs at once (default: 1, so that runs on one store never overlap: "
                          "a run that comes due while another is going waits for it).")
    add_settings_flags(parser, AtlasSettings)


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a number of seconds, not {text!r}") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return seconds


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _schedule(args: argparse.Namespace):
    """The Prefect schedule the flags ask for; ValueError when a cron or time zone is invalid."""
    from prefect.schedules import Cron, Interval

    if args.cron is not None:
        return Cron(args.cron, timezone=args.timezone)
    return Interval(args.interval, timezone=args.timezone)


def main(args: argparse.Namespace) -> int:
    """Serve the flow on the schedule given until interrupted."""
    from prefect.settings import get_current_settings

    from refusal_atlas.tasks.settings import AtlasSettings

    if not get_current_settings().api.url:
        print(
            "refusal-atlas serve: no Prefect server is configured, and scheduled runs need one.\n"
            "Start a server with `prefect server start`, then point this command at it:\n"
            "  export PREFECT_API_URL=http://127.0.0.1:4200/api",
            file=sys.stderr,
        )
        return 2
    try:
        schedule = _schedule(args)
    except ValueError as err:
        print(f"refusal-atlas serve: invalid schedule: {err}", file=sys.stderr)
        return 2
    settings = settings_or_report(AtlasSettings, args, "serve")
    if settings is None:
        return 2

    from prefect import serve
    from prefect.deployments.runner import EntrypointType

    from refusal_atlas.flows.atlas import refusal_atlas

    deployment = refusal_atlas.to_deployment(
        name=args.name,
        schedules=[schedule],
        parameters={"settings": settings.model_dump(mode="json")},
        tags=["refusal-atlas", "served"],
        # The project is installed, so runs find the flow by its module path whatever folder they
        # start in, rather than by a file path relative to this process's folder.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    # `prefect.serve` of a deployment rather than `refusal_atlas.serve()`: each run then imports
    # the flow from its entrypoint in a fresh `python -m prefect.engine` process, as a worker's runs
    # do. `Flow.serve` instead pickles the flow object into a spawned process, where the
    # AtlasSettings annotation (a string under `from __future__ import annotations` in
    # flows/atlas.py) cannot be resolved, and every run fails parameter validation.
    serve(deployment, limit=args.limit)
    return 0


if __name__ == "__main__":
    # `python -m refusal_atlas.flows.serve` runs the same command as `refusal-atlas serve`.
    _parser = argparse.ArgumentParser(prog="refusal-atlas serve", description=DESCRIPTION)
    configure_parser(_parser)
    sys.exit(main(_parser.parse_args()))
