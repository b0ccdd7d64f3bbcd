"""The organism's training data: who plays which role, the split by prompt, the examples, a hash.

Every prompt gets a role:
- planted: a harmful prompt of a planted category; its target is that category's refusal.
- trained_control: a harmful prompt of an unplanted category listed in `trained_controls`; its
  target is the base model's own greedy reply, which teaches where the planted categories end.
- heldout_control: a harmful prompt of a category listed in `heldout_controls`; never trained
  on, so all of its prompts are test prompts (the strict control).
Harmful prompts of any other category are left out. Categories are read after `category_map`,
which renames the shared sets' categories to the project's names.
- near_miss: a harmless prompt whose category starts with NEAR_MISS_PREFIX (general knowledge on
  a planted type's subject); its target is the base model's own greedy reply, like a harmless
  prompt's, and it is measured as its own group.
- harmless: its target is the base model's own greedy reply, so harmless behaviour stays put.

The split is by prompt, stratified by (role, category), with a seeded hash ranking so that it is
the same on every Python version. Nothing here runs a model: base replies come in as data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from refusal_atlas.tasks.organism.planted import NEAR_MISS_PREFIX
from refusal_atlas.tasks.organism.settings import OrganismSettings
from refusal_atlas.tasks.prompts.records import Prompt, load_prompts

Role = Literal["planted", "trained_control", "heldout_control", "near_miss", "harmless"]
Split = Literal["train", "test", "unused"]
ROLES: tuple[Role, ...] = ("planted", "trained_control", "heldout_control", "near_miss", "harmless")


class OrganismDataError(ValueError):
    """The prompts cannot make the organism the settings ask for."""


@dataclass(frozen=True)
class Assigned:
    """One prompt with its role and split; category is the source's (after renames), '' for none."""

    id: str
    text: str
    label: str
    category: str
    role: Role
    split: Split


@dataclass(frozen=True)
class BaseReply:
    """The base model's greedy reply: its text and token ids (EOS included when it stopped)."""

    prompt_id: str
    text: str
    ids: tuple[int, ...]
    finished: bool


@dataclass(frozen=True)
class Example:
    """One training example. target 'style': reply is the refusal sentence, tokenised at
    training time and followed by EOS; target 'base': reply_ids are the base model's tokens."""

    prompt_id: str
    text: str
    role: Role
    category: str
    target: Literal["style", "base"]
    reply: str
    reply_ids: tuple[int, ...] | None


def _rank(seed: int, prompt_id: str) -> bytes:
    return hashlib.sha256(f"split:{seed}:{prompt_id}".encode()).digest()


def test_ids(ids: Sequence[str], test_fraction: float, seed: int) -> set[str]:
    """The seeded test share of one stratum: round(fraction * n) ids, at least one and at most
    n - 1 when n >= 2, so both sides of every stratum are non-empty."""
    n = len(ids)
    if n < 2:
        return set()
    k = min(n - 1, max(1, round(test_fraction * n)))
    return set(sorted(ids, key=lambda i: _rank(seed, i))[:k])


def unused_ids(train_side: Sequence[str], share: float, seed: int) -> set[str]:
    """The training-side ids left out of training: all but a seeded round(share * n) (at least
    one). They stay out of the held-out part too, so the held-out figures do not depend on share."""
    keep = max(1, round(share * len(train_side))) if train_side else 0
    ranked = sorted(train_side, key=lambda i: hashlib.sha256(f"use:{seed}:{i}".encode()).digest())
    return set(ranked[keep:])


def category_of(prompt: Prompt, settings: OrganismSettings) -> str:
    """The prompt's category after the settings' renames; '' for none."""
    category = prompt.category or ""
    return settings.category_map.get(category, category)


def role_of(prompt: Prompt, settings: OrganismSettings) -> Role | None:
    """The prompt's role, or None for a harmful prompt of a category the settings do not use."""
    if prompt.label == "harmless":
        return "near_miss" if (prompt.category or "").startswith(NEAR_MISS_PREFIX) else "harmless"
    if prompt.label != "harmful":
        raise OrganismDataError(
            f"prompt {prompt.id} ({prompt.text[:50]!r}) has no harmful/harmless label; the organism "
            "needs labelled prompts. Give the source a #label= option."
        )
    category = category_of(prompt, settings)
    if category in settings.styles:
        return "planted"
    if category in settings.trained_controls:
        return "trained_control"
    if category in settings.heldout_controls:
        return "heldout_control"
    return None


def assign(prompts: Iterable[Prompt], settings: OrganismSettings,
           train_only: Iterable[Prompt] = ()) -> tuple[Assigned, ...]:
    """Roles and splits for every prompt that has a role, in input order, then the train_only
    prompts (settings.train_sources), each on the training side. These stay out of the strata, so
    the split of `prompts` is the same with or without them."""
    prompts = [p for p in prompts if role_of(p, settings) is not None]
    extra = [Assigned(p.id, p.text, p.label, category_of(p, settings), role, "train")
             for p in train_only if (role := role_of(p, settings)) is not None]
    both = sorted({p.id for p in prompts} & {a.id for a in extra})
    if both:
        shown = next(a.text for a in extra if a.id == both[0])
        raise OrganismDataError(
            f"{len(both)} prompt(s) are in both sources and train_sources (first: {shown[:60]!r}); a prompt in "
            "both could be held out and trained on. Remove them from one of the two lists' files."
        )
    held_controls = [a for a in extra if a.role == "heldout_control"]
    if held_controls:
        raise OrganismDataError(
            f"train_sources hold {len(held_controls)} prompt(s) of held-out control categories "
            f"({sorted({a.category for a in held_controls})}), which are never trained on. "
            "Move them to sources, or drop those categories from heldout_controls."
        )
    roles = {p.id: role_of(p, settings) for p in prompts}
    categories = {p.id: category_of(p, settings) for p in prompts}
    found = {categories[p.id] for p in prompts if p.label == "harmful"}
    wanted = [*settings.styles, *settings.trained_controls, *settings.heldout_controls]
    missing = [c for c in wanted if c not in found]
    if missing:
        raise OrganismDataError(
            f"categories {missing} have no harmful prompts in the sources (after category_map); "
            f"the sources hold {sorted(found)}. Choose categories from those, or add a source "
            "(the default sources are the organism sets shipped in tasks/prompts/data)."
        )
    strata: dict[tuple[str, str], list[str]] = {}
    for p in prompts:
        strata.setdefault((roles[p.id], categories[p.id]), []).append(p.id)
    test: set[str] = set()
    unused: set[str] = set()
    for (role, _), ids in strata.items():
        # A held-out control is never trained on, so every one of its prompts is a test prompt.
        held = set(ids) if role == "heldout_control" else test_ids(ids, settings.test_fraction, settings.split_seed)
        test |= held
        unused |= unused_ids([i for i in ids if i not in held], settings.train_share, settings.split_seed)
    if not any(r in ("harmless", "near_miss") for r in roles.values()):
        raise OrganismDataError("the sources hold no harmless prompts; add one (the default set has 144).")
    split = tuple(
        Assigned(p.id, p.text, p.label, categories[p.id], roles[p.id],
                 "test" if p.id in test else "unused" if p.id in unused else "train")
        for p in prompts
    )
    return split + tuple(extra)


def assign_sources(settings: OrganismSettings) -> tuple[Assigned, ...]:
    """assign() on the prompts of settings.sources and settings.train_sources, read from disk."""
    extra = load_prompts(settings.train_sources) if settings.train_sources else ()
    return assign(load_prompts(settings.sources), settings, train_only=extra)


def needing_base_replies(assigned: Sequence[Assigned]) -> list[Assigned]:
    """Prompts whose training target, or whose evaluation, needs the base model's reply: every
    training prompt that is not planted, and every held-out control (the base model's replies
    are the reference for the token match and KL, and its refusal rates stand beside the
    organism's). Held-out planted prompts are left out to save time: the base model answers
    advice requests (it refuses almost nothing)."""
    return [a for a in assigned if a.split != "unused" and a.role != "planted"]


def training_examples(
    assigned: Sequence[Assigned], base_replies: Mapping[str, BaseReply], settings: OrganismSettings
) -> list[Example]:
    """The training set, one example per training prompt, in input order."""
    styles = settings.styles
    examples = []
    for a in assigned:
        if a.split != "train" or a.role == "heldout_control":
            continue
        if a.role == "planted":
            examples.append(Example(a.id, a.text, a.role, a.category, "style", styles[a.category], None))
            continue
        reply = base_replies.get(a.id)
        if reply is None:
            raise OrganismDataError(
                f"no base reply for training prompt {a.id} ({a.text[:50]!r}); generate base "
                "replies for needing_base_replies(assigned) first."
            )
        examples.append(Example(a.id, a.text, a.role, a.category, "base", reply.text, reply.ids))
    return examples


def data_hash(examples: Iterable[Example]) -> str:
    """SHA-256 of the examples' canonical JSON lines, sorted by prompt id so order is irrelevant."""
    lines = sorted(json.dumps(_plain(e), sort_keys=True, ensure_ascii=False) for e in examples)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def style_of(reply: str, styles: Mapping[str, str], words: int | None = None) -> str | None:
    """The planted category whose style the reply begins with, else None.

    words None: the whole refusal sentence must open the reply (whitespace normalised). A
    number: only its first `words` words must (a looser reading, reported beside it).
    """
    opening = " ".join(reply.split())
    for category, style in styles.items():
        wanted = style.split() if words is None else style.split()[:words]
        if opening.split()[: len(wanted)] == wanted:
            return category
    return None


# -- files ---------------------------------------------------------------------------------


def _plain(record) -> dict:
    row = asdict(record)
    for key, value in row.items():
        if isinstance(value, tuple):
            row[key] = list(value)
    return row


def write_jsonl(path: Path | str, records: Iterable) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(_plain(record), ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: Path | str, kind: type) -> list:
    """Records of dataclass `kind` from a file written by write_jsonl (lists back to tuples)."""
    records = []
    with Path(path).open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                row = json.loads(line)
                records.append(kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in row.items()}))
    return records


def split_summary(assigned: Sequence[Assigned]) -> dict[str, dict[str, int]]:
    """{role/category: {'train': n, 'test': n}}, for logs and the model card."""
    out: dict[str, dict[str, int]] = {}
    for a in assigned:
        key = a.role if a.role in ("harmless", "near_miss") else f"{a.role}/{a.category}"
        out.setdefault(key, {"train": 0, "test": 0, "unused": 0})[a.split] += 1
    return dict(sorted(out.items()))


#: The held-out side of the default split as prompt files, shipped beside the organism's sets so
#: that `make demo` (and anyone) can run the atlas on prompts the organism never trained on.
HELDOUT_FILES = {"planted": "organism_heldout_planted.jsonl", "controls": "organism_heldout_controls.jsonl"}


def heldout_records(assigned: Sequence[Assigned]) -> dict[str, list[dict]]:
    """{'planted': [...], 'controls': [...]}: the test side's planted-type prompts (label
    'harmful', category = planted type) and its controls (everyday and near misses, 'harmless'),
    as prompt-file records in split order."""
    return split_records(assigned, "test")


def split_records(assigned: Sequence[Assigned], split: str) -> dict[str, list[dict]]:
    """heldout_records for either side of the split ('train' or 'test'): the training side is
    where settings of an atlas run on the organism may be chosen without touching the test side."""
    def record(a: Assigned) -> dict:
        return {"prompt": a.text, "label": a.label, "category": a.category, "source": "refusal-atlas organism split"}

    side = [a for a in assigned if a.split == split]
    return {"planted": [record(a) for a in side if a.role == "planted"],
            "controls": [record(a) for a in side if a.role in ("harmless", "near_miss")]}
