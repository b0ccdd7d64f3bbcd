"""Shared fixtures: tiny random models wrapped the way the loader wraps real ones, a tiny model
saved as a model directory, and the session's one Prefect test harness."""

from __future__ import annotations

import pytest
import torch

from refusal_atlas.tasks.model.loading import LoadedModel
from tests.tiny import CHATML, save_tiny_model, tiny_model, tiny_tokenizer

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


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """A temporary Prefect server and database for the whole session (one per session: a second
    harness would replace the first one's settings under the tests still using it), and a result
    folder of the session's own, so that no test reads what other runs left in ~/.prefect."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # Prefect's console handler keeps the stderr it finds when logging is set up; set up here, it
    # finds pytest's session-long capture rather than the stream of a test's capfd, which is
    # closed when that test ends.
    ensure_logging_setup()
    results = tmp_path_factory.mktemp("prefect-results")
    with prefect_test_harness(server_startup_timeout=120), temporary_settings({PREFECT_LOCAL_STORAGE_PATH: results}):
        yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny llama (4 layers, hidden size 32) saved as a Hugging Face model directory."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny")
