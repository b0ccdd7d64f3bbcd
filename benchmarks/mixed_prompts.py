"""The benchmarks' prompt mix: half JailbreakBench harmful, half Alpaca harmless, from ../shared/data."""

from __future__ import annotations

import sys

from refusal_atlas.tasks.prompts.sources import PromptSource
from refusal_atlas.tasks.prompts.records import shared_data_dir


def mixed_sources(n: int, seed: int = 0) -> list[PromptSource]:
    """Sources for n prompts (seeded samples); exits with a message when the data is absent."""
    data = shared_data_dir()
    if data is None:
        sys.exit("this benchmark needs ../shared/data (set REFUSAL_ATLAS_SHARED_DATA)")
    half = n // 2
    return [
        PromptSource(path=str(data / "jailbreakbench_harmful.jsonl"), limit=half, seed=seed),
        PromptSource(path=str(data / "alpaca_harmless.jsonl"), limit=n - half, seed=seed),
    ]
