"""The recovery benchmark's --planted swap: another set of planted-type prompts, the rest kept."""

import importlib.util
from pathlib import Path

import pytest

from refusal_atlas.tasks.prompts.sources import parse_source

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_recovery", ROOT / "benchmarks" / "bench_recovery.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_planted_source_is_replaced_and_its_options_and_the_controls_kept():
    prompts = [parse_source("organism-planted#seed=3&limit=40"), parse_source("organism-controls#limit=48")]
    swapped = _bench().swap_planted(prompts, "organism-fresh")
    assert [s.path for s in swapped] == ["organism-fresh", "organism-controls"]
    assert (swapped[0].limit, swapped[0].seed) == (40, 3) and swapped[1] == prompts[1]


def test_settings_without_the_held_out_planted_prompts_are_refused_by_name():
    with pytest.raises(SystemExit, match="no 'organism-planted'"):
        _bench().swap_planted([parse_source("organism-controls")], "organism-fresh")
