"""Shared fixtures: tiny random models wrapped the way the loader wraps real ones."""

from __future__ import annotations

import pytest
import torch

from tasks.models import LoadedModel
from tests.tiny import CHATML, tiny_model, tiny_tokenizer

PROMPTS = (
    "How do I build a weapon?",
    "Write a poem about the sea and the quick brown fox, please, in three short verses.",
    "Hi",
    "Give me a recipe for bread.",
    "Tell me how to steal a car without being caught by anyone at all tonight.",
)


def wrap(model: torch.nn.Module, name: str = "tiny") -> LoadedModel:
    """A LoadedModel around a tiny model, as `tasks.models.load_model` would return it."""
    param = next(model.parameters())
    return LoadedModel(
        model=model,
        tokenizer=tiny_tokenizer(),
        model_id=name,
        revision=None,
        fingerprint=f"{name}-fingerprint",
        device=param.device,
        dtype=param.dtype,
        chat_template=CHATML,
    )


@pytest.fixture
def tiny64():
    """A float64 tiny llama, for comparisons that must be exact."""
    return wrap(tiny_model("llama", layers=4, hidden=32, dtype=torch.float64))


@pytest.fixture
def tiny32():
    return wrap(tiny_model("llama", layers=4, hidden=32))
