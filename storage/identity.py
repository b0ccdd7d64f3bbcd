"""A prompt's identity: the content hash of its text, computed by one function everywhere.

Surrounding whitespace is no part of a prompt: records store their text stripped
(``tasks.prompts.records.Prompt.create``), and the hash strips too, so the registration, the
store and the per-prompt task, which all call ``text_sha256``, agree whatever text they hold.
"""

from __future__ import annotations

import hashlib

# Ids are the first 16 hex characters (64 bits) of the SHA-256: collisions stay negligible far
# beyond a million prompts, and the id stays short enough to read in task run names.
ID_LENGTH = 16


def text_sha256(text: str) -> str:
    """The full hex SHA-256 of the stripped UTF-8 text."""
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()


def prompt_id(text: str) -> str:
    """A prompt's id: the first 16 hex characters of ``text_sha256(text)``."""
    return text_sha256(text)[:ID_LENGTH]
