"""Where prompts come from: the ``PromptSource`` spec, its CLI form, and the known data folders.

A source is a file (local path or fsspec URL) or the word ``default`` for the prompt set shipped
with the package, plus options: a label or category for files that carry none, and a seeded
sample size. On the command line a source is written ``PATH[#key=value&key=value]``, e.g.
``benchmarks/data/advbench_harmful.jsonl#limit=200&seed=0`` or ``prompts.txt#label=harmless``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import quote, unquote

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from refusal_atlas.tasks.prompts.raw import PromptFileError
from refusal_atlas.tasks.prompts.readers import FORMATS

# The path that names the package's own prompt set.
DEFAULT_SOURCE = "default"
DEFAULT_PROMPTS_FILE = Path(__file__).parent / "data" / "default_prompts.jsonl"
#: Prompt sets shipped with the package, by the name a source may use as its path. The organism
#: names are the held-out side of the refusal model organism's default split (prompts it never
#: trained on; tasks.organism.data.HELDOUT_FILES), which `make demo` runs the atlas on;
#: 'organism-validation' is a third set of planted-type requests, written by a second writer and in
#: neither side of the split, which clustering settings are chosen on (the shipped organism trains on
#: all of it since stop 40: training prompts, never held out);
#: 'organism-fresh' is a fourth, written later still and read by nothing that chooses a setting: a
#: second held-out test set, the clean test of a change chosen on the others.
SHIPPED_SOURCES = {
    DEFAULT_SOURCE: DEFAULT_PROMPTS_FILE,
    "organism-planted": Path(__file__).parent / "data" / "organism_heldout_planted.jsonl",
    "organism-controls": Path(__file__).parent / "data" / "organism_heldout_controls.jsonl",
    "organism-validation": Path(__file__).parent / "data" / "organism_validation_planted.jsonl",
    "organism-fresh": Path(__file__).parent / "data" / "organism_fresh_planted.jsonl",
}

_OPTION_KEYS = ("label", "limit", "seed", "category", "format")


class PromptSource(BaseModel):
    """One prompt file and how to read it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(
        description=(
            "The prompt file: a local path, an fsspec URL (s3://, gs://, memory://, ...) or "
            "'default' for the prompt set shipped with refusal-atlas. The suffix chooses the "
            "format: .jsonl/.json, .csv, .tsv or .txt (one prompt a line), optionally .gz. The "
            "organism's held-out prompts ship as 'organism-planted' and 'organism-controls', "
            "its validation prompts (training prompts, never held out) as 'organism-validation', and a "
            "second held-out set of planted-type requests, written later, as 'organism-fresh'."
        ),
    )
    label: Literal["harmful", "harmless", ""] | None = Field(
        default=None,
        description=(
            "Label for records that carry none (e.g. every line of a .txt file): 'harmful', "
            "'harmless' or '' for unlabelled. A record whose own label differs is an error, "
            "never overridden silently. Empty: take labels from the file."
        ),
    )
    limit: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Take at most this many distinct prompts from the file: a seeded random sample "
            "(kept in file order), not the first lines. Empty: take all."
        ),
    )
    seed: int = Field(
        default=0,
        description="Seed of the sample when a limit is set; the same seed gives the same sample.",
    )
    category: str | None = Field(
        default=None,
        description="Category for records that carry none. Empty: no category.",
    )
    format: Literal["jsonl", "csv", "tsv", "txt"] | None = Field(
        default=None,
        description="The file format when the suffix does not say it. Empty: from the suffix.",
    )

    @field_validator("path")
    @classmethod
    def _path_not_blank(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("the path is empty; give a file path, an fsspec URL or 'default'")
        return value

    @field_validator("category")
    @classmethod
    def _blank_category_is_none(cls, value: str | None) -> str | None:
        return (value.strip() or None) if value is not None else None

    def resolved_path(self) -> str:
        """The path to open: the shipped file for a shipped set's name ('default',
        'organism-planted', 'organism-controls', 'organism-validation'), the user's home expanded
        for '~'."""
        if self.path in SHIPPED_SOURCES:
            return str(SHIPPED_SOURCES[self.path])
        if "://" not in self.path and "::" not in self.path:
            return os.path.expanduser(self.path)
        return self.path

    def to_spec(self) -> str:
        """The CLI form of this source; ``parse_source(s.to_spec()) == s``."""
        options = []
        for key in _OPTION_KEYS:
            value = getattr(self, key)
            if value is None or (key == "seed" and value == 0):
                continue
            options.append(f"{key}={quote(str(value), safe='')}")
        # A path that holds '#' needs a final '#' so that parse_source reads it whole.
        if options or "#" in self.path:
            return f"{self.path}#{'&'.join(options)}"
        return self.path

    def __str__(self) -> str:
        return self.to_spec()


def parse_source(spec: str) -> PromptSource:
    """Parse the CLI form ``PATH[#key=value&key=value]`` of a prompt source.

    Keys: label, limit, seed, category, format; values may be percent-encoded. The options are
    the text after the last '#', so a path that itself contains '#' is written with a final
    '#' and no options (``odd#name.txt#``).
    """
    if isinstance(spec, PromptSource):
        return spec
    if not isinstance(spec, str):
        raise PromptFileError(f"prompt source {spec!r}: expected a string such as 'prompts.txt#label=harmless'.")
    path, _, options = spec.rpartition("#") if "#" in spec else (spec, "", "")
    values: dict[str, str] = {}
    for item in options.split("&") if options else ():
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals:
            raise PromptFileError(
                f"prompt source {spec!r}: the options after '#' must be key=value pairs joined "
                f"by '&', got {item!r}. If '#' is part of the file name, end the spec with '#' "
                f"({spec}#)."
            )
        if key not in _OPTION_KEYS:
            raise PromptFileError(
                f"prompt source {spec!r}: unknown option {key!r}; allowed options: "
                f"{', '.join(_OPTION_KEYS)}."
            )
        if key in values:
            raise PromptFileError(f"prompt source {spec!r}: the option {key!r} is given twice; keep one.")
        values[key] = unquote(value)
    try:
        return PromptSource(path=path, **values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}={error['input']!r}: {error['msg']}"
            for error in exc.errors()
        )
        raise PromptFileError(f"prompt source {spec!r}: {problems}.") from exc


def default_prompts_path() -> Path:
    """The prompt set shipped with the package (what the source 'default' reads)."""
    return DEFAULT_PROMPTS_FILE


__all__ = [
    "DEFAULT_SOURCE",
    "FORMATS",
    "PromptSource",
    "default_prompts_path",
    "parse_source",
]
