"""The errors the atlas store raises. Each message names the problem and what to do about it."""

from __future__ import annotations

import errno


class StoreError(Exception):
    """Base class of every atlas store error."""


class StoreMismatchError(StoreError, ValueError):
    """The store on disk was made for another model, position, layer set or method."""


class StoreSchemaError(StoreMismatchError):
    """The store was written by a newer refusal-atlas, or is not an atlas store at all."""


class StoreLockedError(StoreError, RuntimeError):
    """Another process holds the store's run lock."""


class StoreCorruptError(StoreError):
    """A chunk of the store cannot be read back (a damaged file); the message names the row."""


def unwritable_message(uri: str, err: OSError) -> str:
    """Why a store could not be created or opened for writing, and what to do."""
    where = err.filename or uri
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"cannot create the atlas store at {uri}: the disk holding {where} is full "
                f"({err.strerror}). Free space, or give --store a path on another disk.")
    return (f"cannot create or write the atlas store at {uri}: {where}: {err.strerror or err}. "
            "Nothing was left there; give --store a path in a directory you can write to.")
