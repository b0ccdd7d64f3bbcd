"""Prompts: the ``Prompt`` record, content-hash ids, and loading prompt sets from sources.

``load_prompts(["default", "benchmarks/data/advbench_harmful.jsonl#limit=200&seed=0"])`` reads
each source (see ``tasks.prompt_sources`` for the spec and ``tasks.prompt_readers`` for the
formats), applies the source's defaults and sample, and merges the sources into one
``PromptSet``: prompts in first-seen order, each text once, with a report of what was read,
dropped as duplicate and skipped as blank.

Rules that hold for every format:
- A prompt's text is stored stripped of surrounding whitespace, and its id is the first 16 hex
  characters of the SHA-256 of that UTF-8 text, so the same text always gets the same id.
- A completely blank line (empty or whitespace only) in a .jsonl or .txt file, or a CSV row whose
  cells are all blank, is skipped and counted; a record whose prompt text is empty or whitespace
  only is an error naming its line. Nothing else is ever skipped.
- The same text twice (in one file or across sources) is kept once and counted as a duplicate;
  the first occurrence's category and source are kept. The same text with two different labels
  ("" for unlabelled counts as a label) is an error naming both places.
- A source that yields no prompts at all is an error.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from refusal_atlas.tasks.prompts.raw import LABELS, PromptFileError, RawRecord
from refusal_atlas.tasks.prompts.readers import read_prompt_file
from refusal_atlas.tasks.prompts.sources import (
    DEFAULT_SOURCE,
    PromptSource,
    default_prompts_path,
    parse_source,
)

# The hash rule lives in the store's package, the lowest layer, so that registration, the store
# and the per-prompt task compute a prompt's identity by the same function.
from refusal_atlas.storage.identity import ID_LENGTH, prompt_id, text_sha256


@dataclass(frozen=True)
class Prompt:
    """One prompt. ``label`` is 'harmful', 'harmless' or '' (unlabelled).

    ``origin`` says where it was read ('path:line'; '' when built in code). It is left out of
    equality because the same prompt read from two places is the same prompt.
    """

    id: str
    text: str
    label: str = ""
    category: str | None = None
    source: str = ""
    origin: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        # The invariants every consumer relies on: ids are content hashes of stripped text.
        if not self.text or self.text != self.text.strip():
            raise ValueError(f"Prompt text must be non-empty and stripped, got {self.text!r}; use Prompt.create.")
        if self.id != prompt_id(self.text):
            raise ValueError(f"Prompt id {self.id!r} is not the content hash of its text; use Prompt.create.")
        if self.label not in LABELS:
            raise ValueError(f"unknown label {self.label!r}; allowed: 'harmful', 'harmless' or ''.")

    @classmethod
    def create(
        cls, text: str, label: str = "", category: str | None = None, source: str = "", origin: str = ""
    ) -> Prompt:
        """A prompt from its text (stripped here), with its id computed."""
        text = text.strip()
        return cls(prompt_id(text), text, label, category, source, origin)

    @property
    def sha256(self) -> str:
        # Texts are stripped at creation, so hashing the stored text is hashing the stripped one.
        return text_sha256(self.text)


@dataclass(frozen=True)
class SourceReport:
    """What one source contributed.

    ``read``: valid records in the file; ``distinct``: distinct texts among them; ``sampled``:
    distinct prompts taken after ``limit``; ``kept``: prompts new to the set; ``duplicates``:
    records dropped as repeats (within the file, or of an earlier source); ``blank_lines``:
    blank lines or rows skipped.
    """

    source: str
    path: str
    read: int
    distinct: int
    sampled: int
    kept: int
    duplicates: int
    blank_lines: int


@dataclass(frozen=True)
class LoadReport:
    sources: tuple[SourceReport, ...]

    @property
    def read(self) -> int:
        return sum(report.read for report in self.sources)

    @property
    def duplicates_dropped(self) -> int:
        return sum(report.duplicates for report in self.sources)

    @property
    def blank_lines_skipped(self) -> int:
        return sum(report.blank_lines for report in self.sources)

    def summary(self) -> str:
        """A few human-readable lines, one per source and a total."""
        lines = []
        for r in self.sources:
            sample = f", {r.sampled} sampled of {r.distinct} distinct" if r.sampled < r.distinct else ""
            lines.append(
                f"{r.source}: {r.read} read{sample}, {r.kept} kept, {r.duplicates} duplicates dropped, "
                f"{r.blank_lines} blank lines skipped"
            )
        kept = sum(r.kept for r in self.sources)
        lines.append(
            f"total: {kept} prompts from {len(self.sources)} source(s); "
            f"{self.duplicates_dropped} duplicates dropped, {self.blank_lines_skipped} blank lines skipped"
        )
        return "\n".join(lines)


@dataclass(frozen=True)
class PromptSet:
    """Prompts in first-seen order, each text once, and the report of how they were loaded."""

    prompts: tuple[Prompt, ...]
    report: LoadReport

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self.prompts)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(p.id for p in self.prompts)

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(p.text for p in self.prompts)

    def with_label(self, label: str) -> tuple[Prompt, ...]:
        return tuple(p for p in self.prompts if p.label == label)

    def by_id(self) -> dict[str, Prompt]:
        return {p.id: p for p in self.prompts}


def load_prompts(sources: Sequence[PromptSource | str] | PromptSource | str) -> PromptSet:
    """Load, validate, sample and merge prompt sources (see the module docstring for the rules).

    Each source is a ``PromptSource`` or its CLI form (``PATH[#key=value&...]``); a single one
    may be passed on its own. Raises PromptFileError for any bad spec, file or record.
    """
    if isinstance(sources, (str, PromptSource)):
        sources = [sources]
    specs = [parse_source(source) for source in sources]
    if not specs:
        raise PromptFileError(f"no prompt sources given; pass at least one, e.g. {DEFAULT_SOURCE!r}.")
    merged: dict[str, Prompt] = {}
    reports = []
    for spec in specs:
        path = spec.resolved_path()
        contents = read_prompt_file(path, spec.format)
        if not contents.records:
            raise PromptFileError(
                f"{path}: contains no prompts ({contents.blank_lines} blank lines). Add prompts, "
                f"or drop this source."
            )
        distinct: dict[str, Prompt] = {}
        for record in contents.records:
            _merge(distinct, _to_prompt(record, spec, path))
        sampled = _sample(list(distinct.values()), spec.limit, spec.seed)
        kept = sum(_merge(merged, prompt) for prompt in sampled)
        reports.append(
            SourceReport(
                source=spec.to_spec(),
                path=path,
                read=len(contents.records),
                distinct=len(distinct),
                sampled=len(sampled),
                kept=kept,
                duplicates=len(contents.records) - len(distinct) + len(sampled) - kept,
                blank_lines=contents.blank_lines,
            )
        )
    return PromptSet(tuple(merged.values()), LoadReport(tuple(reports)))


def _to_prompt(record: RawRecord, spec: PromptSource, path: str) -> Prompt:
    origin = f"{path}:{record.line}"
    if record.label is not None and spec.label is not None and record.label != spec.label:
        raise PromptFileError(
            f"{path}: line {record.line}: the record's label {record.label!r} contradicts the "
            f"source's label={spec.label!r}. The source label only fills in missing labels; "
            f"drop it from the source spec or fix the record."
        )
    label = record.label if record.label is not None else (spec.label or "")
    source = record.source or (DEFAULT_SOURCE if spec.path == DEFAULT_SOURCE else spec.path)
    return Prompt.create(record.text, label, record.category or spec.category, source, origin)


def _merge(into: dict[str, Prompt], prompt: Prompt) -> bool:
    """Add ``prompt`` unless its text is there already; True when it was added."""
    first = into.get(prompt.id)
    if first is None:
        into[prompt.id] = prompt
        return True
    if first.label != prompt.label:
        raise PromptFileError(
            f"the prompt {_excerpt(prompt.text)} (id {prompt.id}) has label {first.label!r} at "
            f"{first.origin} and label {prompt.label!r} at {prompt.origin}. A prompt cannot carry "
            f"two labels: fix one of the files, or give both sources the same #label=."
        )
    return False


def _sample(prompts: list[Prompt], limit: int | None, seed: int) -> list[Prompt]:
    """At most ``limit`` prompts, a seeded sample kept in file order.

    Prompts are ranked by a hash of (seed, id) rather than drawn with ``random``, so the sample
    is the same on every Python version, and adding lines to a file changes it only a little.
    """
    if limit is None or limit >= len(prompts):
        return prompts

    def rank(prompt: Prompt) -> bytes:
        return hashlib.sha256(f"{seed}:{prompt.id}".encode()).digest()

    chosen = {p.id for p in sorted(prompts, key=rank)[:limit]}
    return [p for p in prompts if p.id in chosen]


def _excerpt(text: str, width: int = 60) -> str:
    return repr(text if len(text) <= width else text[: width - 3] + "...")


__all__ = [
    "DEFAULT_SOURCE",
    "LoadReport",
    "Prompt",
    "PromptFileError",
    "PromptSet",
    "PromptSource",
    "SourceReport",
    "default_prompts_path",
    "load_prompts",
    "parse_source",
    "prompt_id",
    "text_sha256",
]
