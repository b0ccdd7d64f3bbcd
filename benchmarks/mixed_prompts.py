"""The benchmarks' prompt mix: half JailbreakBench harmful, half the project's harmless prompts.

Both files ship in benchmarks/data/ (see its SOURCES.md for origins and licences).
"""

from __future__ import annotations

from pathlib import Path

from refusal_atlas.tasks.prompts.sources import PromptSource

DATA = Path(__file__).resolve().parent / "data"
HARMFUL = DATA / "jailbreakbench_harmful.jsonl"  # 100 prompts, 10 categories
HARMLESS = DATA / "harmless_everyday.jsonl"  # 100 prompts written for the project


def mixed_sources(n: int, seed: int = 0) -> list[PromptSource]:
    """Sources for n prompts (seeded samples), at most 100 of each label."""
    half = n // 2
    if half > 100 or n - half > 100:
        raise SystemExit(f"the benchmark mix holds at most 100 prompts of each label; asked for {n} in all")
    return [
        PromptSource(path=str(HARMFUL), limit=half, seed=seed),
        PromptSource(path=str(HARMLESS), limit=n - half, seed=seed),
    ]
