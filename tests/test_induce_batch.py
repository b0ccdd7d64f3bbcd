"""Induce through the layers above L only equals induce through a hook on the whole model."""

import numpy as np
import pytest
import torch

from refusal_atlas.tasks.engine.direction_engine import DirectionEngine
from refusal_atlas.tasks.evaluation.induce_batch import InduceBatch
from refusal_atlas.tasks.evaluation.measures import score
from refusal_atlas.tasks.model.hooks import add_to_residual
from refusal_atlas.tasks.settings import DirectionSettings, EngineSettings
from tests.conftest import PROMPTS, wrap
from tests.tiny import tiny_model


def _setup(loaded, layer):
    engine = DirectionEngine(loaded, DirectionSettings(layers=[layer]), EngineSettings())
    # Prompts of different lengths, so the left padding of the prefix is exercised too.
    rendered = [engine.render(t) for t in [*PROMPTS, "Hi"]]
    return engine, rendered


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("layer", [0, 2])
def test_upper_layers_induce_equals_the_hook_on_the_whole_model(arch, layer):
    loaded = wrap(tiny_model(arch, layers=4, hidden=32, dtype=torch.float64))
    engine, rendered = _setup(loaded, layer)
    batch = InduceBatch.of(loaded.model, rendered, engine.target, engine.pad_id, layer)
    assert batch is not None
    vector = 3 * torch.randn(32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for v in (None, vector):
        hook = None if v is None else (lambda v=v: add_to_residual(loaded.model, layer, v))
        expected = score(loaded.model, rendered, engine.target, engine.pad_id, layer, 4, hook)
        f, log_odds = batch.score(v)
        np.testing.assert_allclose(f, expected.f, rtol=0, atol=1e-10)
        np.testing.assert_allclose(log_odds, expected.log_odds, rtol=0, atol=1e-10)
        if v is None:  # the norm the induce scale is relative to: the unmodified model's
            np.testing.assert_allclose(batch.h_norm.numpy(), expected.h_norm, rtol=1e-12)
    # The vector moved f: the comparison above is not between two unmodified models.
    assert np.max(np.abs(batch.score(vector)[0] - batch.score(None)[0])) > 1e-3


def test_architectures_without_a_layer_stack_get_none():
    loaded = wrap(tiny_model("gemma2", layers=2, hidden=32, dtype=torch.float64))
    engine, rendered = _setup(loaded, 1)
    assert InduceBatch.of(loaded.model, rendered, engine.target, engine.pad_id, 1) is None
