"""A prompt's identity: the content hash of its text, computed by one function everywhere.

A prompt's text is stripped of surrounding whitespace once, when its record is made
(``tasks.prompts.records.Prompt.create``); from then on the stored text is hashed as it is, so
the registration, the store and the per-prompt task all agree on the same bytes.
"""

from __future__ import annotations

import hashlib

# Ids are the first 16 hex characters (64 bits) of the SHA-256: collisions stay negligible far
# beyond a million prompts, and the id stays short enough to read in task run names.
ID_LENGTH = 16


def text_sha256(text: str) -> str:
    """The full hex SHA-256 of the UTF-8 text, exactly as given (callers strip it first)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def prompt_id(text: str) -> str:
    """A prompt's id: the first 16 hex characters of ``text_sha256(text)``."""
    return text_sha256(text)[:ID_LENGTH]
