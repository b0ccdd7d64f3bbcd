"""Numerical failures through the flow: a zero, infinite or NaN gradient, or a model whose f is NaN,
marks that prompt's row failed with its reason, never done; the other rows are kept, and a rerun
computes exactly the failed rows again.

The engine-level checks live in test_engine.py: a zero gradient fails the prompt with its reason
(test_zero_gradient_fails_the_row_with_its_reason) and half-precision models score f in float32
(test_half_precision_models_score_in_float32).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import robustness_support as support
import torch

from refusal_atlas.storage import STATUS_DONE, STATUS_FAILED, AtlasStore
from refusal_atlas.tasks.prompts.records import prompt_id
from tests.tiny import tiny_model, tiny_tokenizer

# Which prompt gets which fault, and the words its row's reason must hold.
FAULTS = {
    support.HARMFUL[0]: ("zero", "gradient of f is zero at h_0"),
    support.HARMFUL[1]: ("nan", "gradient of f is not finite at h_0"),
    support.HARMFUL[2]: ("inf", "gradient of f is not finite at"),  # at step 1, point or anchor
}


def _inject_gradient_faults(monkeypatch, engine) -> None:
    """Make the engine's evaluations return a zero or NaN gradient at h_0, or an infinite one at
    the first gradient step, for the prompts of FAULTS, whatever batch they share."""
    from refusal_atlas.tasks.engine.prefix import PrefixBatch

    by_ids = {tuple(engine.render(text).input_ids): kind for text, (kind, _) in FAULTS.items()}
    real_init, real_evaluate = PrefixBatch.__init__, PrefixBatch.evaluate

    def init(self, model, rendered, target, pad_id, skip_lower_layers=True):
        real_init(self, model, rendered, target, pad_id, skip_lower_layers)
        self.faults = [by_ids.get(tuple(r.input_ids)) for r in rendered]

    def evaluate(self, prompts, layers, values=None, grad=True):
        ev = real_evaluate(self, prompts, layers, values, grad)
        if not grad:
            return ev
        gradient = ev.grad.clone()
        for query, prompt in enumerate(prompts.tolist()):
            fault = self.faults[prompt]
            at_h0 = values is None
            if (fault == "zero" and at_h0) or (fault == "nan" and at_h0) or (fault == "inf" and not at_h0):
                gradient[query] = {"zero": 0.0, "nan": float("nan"), "inf": float("inf")}[fault]
        return dataclasses.replace(ev, grad=gradient)

    monkeypatch.setattr(PrefixBatch, "__init__", init)
    monkeypatch.setattr(PrefixBatch, "evaluate", evaluate)


def test_bad_gradients_fail_their_rows_only_and_a_rerun_computes_exactly_those(prefect_harness, tiny_model_dir,
                                                                                tmp_path, monkeypatch):
    from refusal_atlas.flows.atlas import refusal_atlas
    from refusal_atlas.tasks.engine.direction_engine import get_engine

    settings = support.settings(tiny_model_dir, tmp_path / "atlas.zarr", support.sources(tmp_path, 8, 3))
    _inject_gradient_faults(monkeypatch, get_engine(settings.model, settings.directions, settings.engine))
    first = refusal_atlas(settings)
    assert first["extraction"]["failed"] == 3 and first["extraction"]["computed"] == 8

    store = AtlasStore.open(settings.store)
    errors = store.errors()
    for text, (kind, words) in FAULTS.items():
        row = store.row_of(prompt_id(text))
        assert store.status()[row] == STATUS_FAILED, f"the {kind} gradient's row is not marked failed"
        assert words in errors[row], f"the {kind} gradient's row gives the reason {errors[row]!r}"
    assert "step 1" in errors[store.row_of(prompt_id(support.HARMFUL[2]))]
    faulty = {store.row_of(prompt_id(t)) for t in FAULTS}
    kept = [row for row in range(store.n_rows) if row not in faulty]
    assert (store.status()[kept] == STATUS_DONE).all(), "the other rows must be done"
    harmful_kept = [store.row_of(prompt_id(t)) for t in support.HARMFUL[3:8]]
    assert np.isfinite(store.read_rows(harmful_kept, ("direction",))["direction"]).all()

    monkeypatch.undo()  # the fault is gone: the rerun computes the failed rows, and only those
    second = refusal_atlas(settings)
    assert second["extraction"]["computed"] == 3 and second["extraction"]["failed"] == 0
    assert second["extraction"]["cached"] + second["extraction"]["stored"] == 8
    assert AtlasStore.open(settings.store).done_rows().size == 11


@pytest.fixture(scope="module")
def nan_model_dir(tmp_path_factory):
    """The tiny model with one NaN weight in decoder layer 3, above the layers read (1 and 2):
    h_0 is finite, but f, and so its gradient, is NaN for every prompt."""
    directory = tmp_path_factory.mktemp("nan-model") / "tiny"
    model = tiny_model()
    with torch.no_grad():
        model.model.layers[3].mlp.down_proj.weight[0, 0] = float("nan")
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def test_a_nan_weight_above_the_layer_fails_every_row_with_its_reason(prefect_harness, nan_model_dir, tmp_path,
                                                                      capsys):
    from refusal_atlas.flows.cli import main

    store_path = tmp_path / "atlas.zarr"
    code = main(support.flags(nan_model_dir, store_path, support.sources(tmp_path, 4, 2)))
    err = capsys.readouterr().err
    # Nothing is left to cluster, and the command says so and where to look.
    assert code == 1
    assert "no done prompts" in err and f"refusal-atlas inspect {store_path}" in err

    store = AtlasStore.open(str(store_path))
    assert store.n_rows == 6 and store.done_rows().size == 0, "a row with a NaN f must never be done"
    reasons = store.errors()
    assert sorted(reasons) == list(range(6)), "every row is marked failed"
    # Harmful rows fail in the gradient walk, harmless ones (no walk) in the row check.
    assert all("f(h_0) is not finite" in reason for reason in reasons.values()), reasons
