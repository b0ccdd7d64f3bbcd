"""What `refusal-atlas run` says when a run stops on a failure the user can act on.

Known failures end the command with one paragraph on stderr and no traceback (Prefect's console
log shows their one-line summary without one too; the API's log keeps everything):

- exit 2, the input cannot be used: settings, prompt files, the model, its layers or chat
  template, a store made for another model or one that cannot be created at the path given;
- exit 1, the run stopped: the Prefect API was lost, the disk is full, the store is held by
  another run or has a damaged chunk, or no prompt could be clustered. The message says what is
  kept in the store and how to resume (the same command again, which computes only what is missing).

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Iterator
from dataclasses import dataclass

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class Failure:
    message: str
    code: int
    # The API is gone: Prefect's exit handlers would retry sending its queued events for minutes.
    api_lost: bool = False


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err``, its causes and contexts, and the members of exception groups, each once."""
    seen: set[int] = set()
    todo = [err]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend(getattr(current, "exceptions", ()) or ())
        todo.extend([current.__cause__, current.__context__])


def _input_errors() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from refusal_atlas.tasks.model.chat import ChatTemplateError
    from refusal_atlas.tasks.model.hooks import LayerIndexError
    from refusal_atlas.tasks.model.loading import ModelLoadError
    from refusal_atlas.tasks.prompts.raw import PromptFileError

    return (ModelLoadError, LayerIndexError, ChatTemplateError, PromptFileError, ValidationError)


def classify(err: BaseException) -> tuple[str, BaseException] | None:
    """(kind, the exception that says it) for a known failure, else None. Cheap: reads nothing."""
    import httpx

    from refusal_atlas.storage import StoreCorruptError, StoreError, StoreLockedError
    from refusal_atlas.tasks.clustering.geometry import ClusteringError

    kinds = (
        ("api", lambda e: isinstance(e, httpx.TransportError)),
        ("disk", lambda e: isinstance(e, OSError) and e.errno in DISK_FULL),
        ("busy", lambda e: isinstance(e, StoreLockedError)),
        ("damaged", lambda e: isinstance(e, StoreCorruptError)),
        ("input", lambda e: isinstance(e, (StoreError, *_input_errors()))),
        ("nothing", lambda e: isinstance(e, ClusteringError)),
    )
    # Outermost first: a model that failed to load over the network is a ModelLoadError (an
    # input to fix), though an httpx error may sit deeper in its chain.
    for current in _chain(err):
        for kind, test in kinds:
            if test(current):
                return kind, current
    return None


def _api_url(err: BaseException) -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if url:
        return str(url)
    try:
        request = err.request  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):
        return "(the temporary local server)"
    return f"{request.url.scheme}://{request.url.netloc.decode()}"


def _kept(store_uri: str) -> str:
    """What the store holds now, in words, or that nothing was written to it."""
    from refusal_atlas.storage import STATUS_DONE, AtlasStore

    try:
        store = AtlasStore.open(store_uri)
        status, registered = store.status(), store.prompt_ids() != ""
        staged = store.staged_rows().size
    except FileNotFoundError:
        return f"Nothing was written to {store_uri} yet."
    except Exception as err:  # noqa: BLE001 - the message must still be printed
        return f"The store {store_uri} could not be read to count its rows ({err})."
    done = int((status[registered] == STATUS_DONE).sum())
    # Staged rows were computed but their block was not written yet; the rerun writes them first.
    more = f", and {staged} computed rows staged for writing" if staged else ""
    return f"The store {store_uri} keeps the {done} of its {int(registered.sum())} rows that are done{more}."


def explain(err: BaseException, store_uri: str) -> Failure | None:
    """The message and exit code for a known failure of a run on ``store_uri``, else None."""
    found = classify(err)
    if found is None:
        return None
    kind, cause = found
    rerun = "rerun the same command: it computes only the rows still missing"
    if kind == "api":
        return Failure(
            f"lost the Prefect API at {_api_url(cause)} ({type(cause).__name__}: {cause}). "
            f"{_kept(store_uri)} Once the server answers again (`prefect server start`, or unset "
            f"PREFECT_API_URL to run on a temporary local one), {rerun}.", 1, api_lost=True)
    if kind == "disk":
        return Failure(f"the disk is full ({cause}). {_kept(store_uri)} Free space, then {rerun}.", 1)
    if kind in ("busy", "damaged"):
        return Failure(str(cause), 1)
    if kind == "nothing":
        return Failure(f"{cause} See why rows failed with `refusal-atlas inspect {store_uri}`.", 1)
    return Failure(str(cause), 2)


@contextlib.contextmanager
def short_tracebacks() -> Iterator[None]:
    """While the block runs, Prefect's console log prints known failures without a traceback.

    The record keeps its exception for the other handlers (the API's log shows it whole), so the
    console formatter hides it only for the time it formats the record.
    """
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]
    formatters = {id(h.formatter): h.formatter for lg in loggers for h in getattr(lg, "handlers", ())
                  if isinstance(h, PrefectConsoleHandler) and h.formatter is not None}

    def shortened(original):
        def format_record(record: logging.LogRecord) -> str:
            exc = record.exc_info[1] if record.exc_info else None
            if exc is None or classify(exc) is None:
                return original(record)
            saved = record.exc_info, record.exc_text
            record.exc_info, record.exc_text = None, None
            try:
                return original(record)
            finally:
                record.exc_info, record.exc_text = saved

        return format_record

    for formatter in formatters.values():
        formatter.format = shortened(formatter.format)
    try:
        yield
    finally:
        for formatter in formatters.values():
            del formatter.format
