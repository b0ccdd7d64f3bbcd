"""Shared helper of the evaluation tests: a tiny model with a planted refusal direction."""

from __future__ import annotations

import torch

from refusal_atlas.tasks.engine.direction_engine import DirectionEngine
from refusal_atlas.tasks.settings import DirectionSettings, EngineSettings
from tests.conftest import wrap
from tests.test_engine import _planted_model
from tests.tiny import tiny_model

LAYER = 1


def planted_engine(phrase: str = "I"):
    """(engine at layer 1 with the one-token phrase, u [32]): a tiny llama whose layers after 1
    pass the residual through unchanged (test_engine's planted model), with no final norm and an
    unembedding whose only non-zero row is the phrase token's, along the unit vector u; every
    token embedding also carries +0.2 u. So f rises with u.h, the stream holds a positive u
    component, and projecting u out removes it. Greedy decoding emits the phrase token while
    its logit 3 u.h is positive and token 0 (a stop token) otherwise."""
    probe = DirectionEngine(wrap(tiny_model("llama")), DirectionSettings(phrases=[phrase]), EngineSettings())
    model, u = _planted_model(LAYER, probe.target.token_ids[0][0])
    with torch.no_grad():
        model.model.embed_tokens.weight += 0.2 * u
    settings = DirectionSettings(layers=[LAYER], phrases=[phrase], steps=1)
    return DirectionEngine(wrap(model), settings, EngineSettings()), u.numpy()
