"""Raw prompt records: the fields one line of a prompt file gives, validated.

Every reader (JSON Lines, CSV or TSV, plain text) turns its lines into these; ids, defaults and
deduplication come later (``tasks.prompts.records``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# The labels a record may carry; "" means unlabelled.
LABELS = ("harmful", "harmless", "")


class PromptFileError(ValueError):
    """A prompt source that cannot be used as given: its spec, its file or one of its records.

    The message names the source, the line where there is one, the problem and the fix.
    """


@dataclass(frozen=True)
class RawRecord:
    """One prompt as a file states it, before ids, defaults and deduplication.

    ``text`` is stripped and non-empty. ``label``, ``category`` and ``source`` are None when the
    file does not give them (an empty string in the file counts as not given).
    """

    line: int
    text: str
    label: str | None
    category: str | None
    source: str | None


@dataclass(frozen=True)
class FileContents:
    """The records of one file, in file order, and how many blank lines were skipped."""

    records: tuple[RawRecord, ...]
    blank_lines: int


def record_from_fields(where: str, line: int, fields: Mapping[str, object]) -> RawRecord:
    """Validate one record's fields (a JSON object or a CSV row keyed by the header).

    Fields other than prompt, label, category and source are ignored, so files written by
    other tools (with ids, scores, ...) load as they are.
    """
    prompt, label = fields["prompt"], fields.get("label")
    if not isinstance(prompt, str):
        raise PromptFileError(
            f"{where}: \"prompt\" is a {json_type(prompt)}, not a string. Write the prompt text "
            f"as a JSON string."
        )
    text = prompt.strip()
    if not text:
        raise PromptFileError(
            f"{where}: the prompt text is empty or only whitespace. Fill it in or delete the record."
        )
    label = _optional_str(label, "label", where)
    if label is not None and label not in LABELS:
        raise PromptFileError(
            f"{where}: unknown label {label!r}. Allowed labels: 'harmful', 'harmless', or empty "
            f"(or null, or no label field) for unlabelled."
        )
    return RawRecord(
        line,
        text,
        label,
        _optional_str(fields.get("category"), "category", where),
        _optional_str(fields.get("source"), "source", where),
    )


def _optional_str(value: object, field: str, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise PromptFileError(
            f"{where}: \"{field}\" is a {json_type(value)}; it must be a string or null."
        )
    return value.strip() or None


def json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
