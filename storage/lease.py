"""The run lease: one pipeline run at a time computes on a store; a second one refuses.

Two runs on one store would both be block writers, and a block must have one writer at a time
(blocks.py: a block is read, merged and written back whole, so one run's write could undo the
other's). They would also compute the same rows twice, flip each other's done rows back to
pending while rewriting them, and replace each other's concept and cluster groups under a reader. So a run takes this lease
after registering its prompts (which is safe at any time) and holds it until it ends; a second
run finds it taken and stops with ``StoreLockedError`` naming the holder. Its own new prompts
stay registered, pending, and the next run computes them.

The lease is an exclusive ``flock`` on ``<store>.run.lock`` beside the store (the file of
lock.py's ``FileLock``, with its own message), so the kernel releases it when its holder dies,
even by SIGKILL: a killed run never blocks the rerun. Remote URLs have no lease (object stores
have no locks): there one must not start two runs on a store at once.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from refusal_atlas.storage.lock import FileLock
from refusal_atlas.storage.uri import parse_location

LEASE_SUFFIX = ".run.lock"


def lease_path(store_path: Path) -> Path:
    """``/x/atlas.zarr`` -> ``/x/atlas.zarr.run.lock``."""
    return store_path.with_name(store_path.name + LEASE_SUFFIX)


class _Lease(FileLock):
    def _locked_message(self) -> str:
        pid, host, since = self.holder()
        store = self.path.name.removesuffix(LEASE_SUFFIX)
        return (
            f"another refusal-atlas run (pid {pid} on host {host}, since {since}) is computing in the "
            f"store {self.path.with_name(store)}; two runs on one store at once would compute the "
            "same rows twice. This run registered its prompts and stops here without computing: "
            "rerun the same command once that run has finished (it computes only what is still "
            f"missing). The lease {self.path} is released when that run ends, even if it is killed."
        )


@contextlib.contextmanager
def run_lease(uri: str):
    """Hold the run lease of the store at ``uri`` for the block; ``StoreLockedError`` if taken."""
    location = parse_location(uri)
    if location.local_path is None:
        yield
        return
    lease = _Lease(lease_path(location.local_path))
    lease.acquire(0.0)
    try:
        yield
    finally:
        lease.release()
