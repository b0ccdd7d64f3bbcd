"""The errors the atlas store raises. Each message names the problem and what to do about it."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every atlas store error."""


class StoreMismatchError(StoreError, ValueError):
    """The store on disk was made for another model, position, layer set or method."""


class StoreSchemaError(StoreMismatchError):
    """The store was written by a newer refusal-atlas, or is not an atlas store at all."""


class StoreLockedError(StoreError, RuntimeError):
    """Another process holds the store's run lock."""
