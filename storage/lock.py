"""The store's run lock: one registering (resizing) writer at a time.

Row writes need no lock (each block of rows has one writer, blocks.py). Registration resizes every per-prompt array
and must be single-writer. Within one process a re-entrant thread lock per store location
serialises callers. Across processes on a local filesystem, an ``fcntl.flock`` on the file
``<store>.lock`` next to the store directory (inside it, zarr would warn about a stray object)
excludes other processes; the file records the holder's pid, host
and start time so that a refused caller can say who holds it. The kernel drops a flock when its
process dies, so a writer killed with SIGKILL leaves no stale lock behind; a *hung* holder keeps
it until it is ended. The file itself is never deleted: deleting a lock file that another process
has open and is waiting on would let two processes lock two different files.

Remote URLs (s3://, gs://, memory://...) get only the in-process lock: object stores have no
locks, so there the lock is advisory and the caller must make sure one process registers at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from refusal_atlas.storage.errors import StoreLockedError

LOCK_SUFFIX = ".lock"

_registry_guard = threading.Lock()
_process_locks: dict[str, threading.RLock] = {}
# How deeply this process holds each store's lock: the flock is taken at the outermost level only.
_depth: dict[str, int] = {}


def process_lock(uri: str) -> threading.RLock:
    """The re-entrant lock shared by every ``AtlasStore`` of ``uri`` in this process."""
    with _registry_guard:
        return _process_locks.setdefault(uri, threading.RLock())


def lock_path(store_path: Path) -> Path:
    """The lock file of a local store: ``/x/atlas.zarr`` -> ``/x/atlas.zarr.lock``."""
    return store_path.with_name(store_path.name + LOCK_SUFFIX)


@contextlib.contextmanager
def run_lock(location, timeout: float = 0.0):
    """Hold the run lock of ``location`` (a ``StoreLocation``); re-entrant within a thread.

    Other threads of this process wait for it; another process holding the file lock makes this
    raise ``StoreLockedError`` after ``timeout`` seconds.
    """
    with process_lock(location.uri):
        depth = _depth.get(location.uri, 0)
        file_lock = None
        if depth == 0 and location.local_path is not None:
            file_lock = FileLock(lock_path(location.local_path))
            file_lock.acquire(timeout)
        _depth[location.uri] = depth + 1
        try:
            yield
        finally:
            _depth[location.uri] = depth
            if file_lock is not None:
                file_lock.release()


class FileLock:
    """An exclusive ``flock`` on ``path``, with the holder described inside the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, timeout: float = 0.0) -> None:
        """Take the lock, retrying for up to ``timeout`` seconds, else raise ``StoreLockedError``."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise StoreLockedError(self._locked_message()) from None
                time.sleep(0.05)
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock; the emptied file stays (see the module docstring for why)."""
        import fcntl

        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def holder(self) -> tuple[str, str, str]:
        """(pid, host, since) of the process that holds the lock, as far as the file says."""
        try:
            holder = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            holder = {}
        return holder.get("pid", "?"), holder.get("host", "?"), holder.get("since", "an unknown time")

    def _locked_message(self) -> str:
        pid, host, since = self.holder()
        return (
            f"the store's run lock {self.path} is held by pid {pid} on host {host} since {since}. "
            "Another refusal-atlas process is registering prompts in this store; wait for it to "
            f"finish. The lock is released when that process exits, even if it is killed; if it "
            f"is hung, end it (e.g. `kill {pid}` on {host}) and retry."
        )
