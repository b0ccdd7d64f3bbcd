"""Store locations (local paths and fsspec URLs) and validation of names used inside a store."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# Names of groups inside the store (cluster runs and the like): no separators, no traversal.
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class StoreLocation:
    """Where a store lives. ``local_path`` is set for local directories, None for remote URLs."""

    uri: str
    local_path: Path | None

    @property
    def is_local(self) -> bool:
        return self.local_path is not None

    def zarr_store(self, read_only: bool):
        """A zarr Store object for this location (LocalStore or FsspecStore)."""
        from zarr.storage import FsspecStore, LocalStore

        if self.local_path is not None:
            return LocalStore(self.local_path, read_only=read_only)
        return FsspecStore.from_url(self.uri, read_only=read_only)


def parse_location(uri: str | os.PathLike) -> StoreLocation:
    """Turn a local path, ``file://`` URL or other fsspec URL into a ``StoreLocation``.

    Local paths are made absolute so that the same store opened from another working
    directory (or another process) is recognised as the same store.
    """
    text = os.fspath(uri)
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the store location is empty; give a directory path or an fsspec URL")
    if "\x00" in text:
        raise ValueError(f"the store location {text!r} contains a NUL character")
    if text.startswith("file://"):
        text = text[len("file://"):]
    elif "://" in text:
        protocol, _, rest = text.partition("://")
        if not protocol or not rest.strip("/"):
            raise ValueError(f"the store URL {text!r} names no path; write e.g. s3://bucket/atlas.zarr")
        return StoreLocation(uri=text.rstrip("/"), local_path=None)
    path = Path(text).expanduser().absolute()
    return StoreLocation(uri=str(path), local_path=path)


def validate_name(name: str, what: str = "name") -> str:
    """Check a group name inside the store: ``[A-Za-z0-9_.-]+`` and not ``.`` or ``..``."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in {".", ".."}:
        raise ValueError(
            f"invalid {what} {name!r}: use only letters, digits, '_', '.' and '-' "
            "(no '/' and not '.' or '..')"
        )
    return name
