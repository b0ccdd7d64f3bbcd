"""The discovery / held-out split of the prompts.

Everything the verdict reads is measured on prompts that built none of the directions it tests,
so the prompts are split once: a prompt is held out when a hash of (seed, label, category,
prompt id), read as a number in [0, 1), is below the held-out fraction. Each prompt's side is a
pure function of its own id and the seed, so appending prompts to a store never moves an
existing prompt from one side to the other (a split drawn with a random generator over the
whole list would reshuffle them all), and a rerun with the same seed reproduces the split
exactly. Each (label, category) stratum is split at the same rate, so every label and category
is represented on both sides in proportion (in expectation; a stratum of three prompts can
still fall on one side, which `split_counts` shows).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence

import numpy as np


def heldout_score(prompt_id: str, seed: int, label: str = "", category: str | None = None) -> float:
    """The prompt's uniform draw in [0, 1): the first 8 bytes of SHA-256, as a fraction."""
    key = f"{int(seed)}\x1f{label or ''}\x1f{category or ''}\x1f{prompt_id}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2.0**64


def heldout_mask(
    prompt_ids: Sequence[str],
    fraction: float,
    seed: int,
    labels: Sequence[str] | None = None,
    categories: Sequence[str | None] | None = None,
) -> np.ndarray:
    """[n] bool: True for held-out prompts. fraction 0 holds out nothing."""
    if not 0 <= fraction < 1:
        raise ValueError(f"the held-out fraction must be in [0, 1), not {fraction}.")
    n = len(prompt_ids)
    labels = [""] * n if labels is None else list(labels)
    categories = [None] * n if categories is None else list(categories)
    return np.array([heldout_score(str(p), seed, str(lab or ""), c) < fraction
                     for p, lab, c in zip(prompt_ids, labels, categories)], dtype=bool)


def dataset_heldout(ds, fraction: float, seed: int) -> np.ndarray:
    """heldout_mask of every row of a store's xarray view (prompt_id, label and category read
    off it): [n] bool, in the view's row order."""
    return heldout_mask([str(i) for i in np.asarray(ds["prompt_id"].values)], fraction, seed,
                        [str(v) for v in np.asarray(ds["label"].values, dtype=object)],
                        [c if c else None for c in np.asarray(ds["category"].values, dtype=object)])


def split_counts(heldout: np.ndarray, labels: Sequence[str], categories: Sequence[str | None]) -> dict:
    """{(label, category): (discovery, held out)} for a report or a test."""
    total = Counter(zip(labels, categories))
    held = Counter(key for key, h in zip(zip(labels, categories), heldout) if h)
    return {key: (count - held[key], held[key]) for key, count in total.items()}
