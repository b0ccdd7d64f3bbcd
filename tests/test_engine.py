"""The direction engine: exact gradients, batching that changes nothing, planted answers."""

import concurrent.futures

import numpy as np
import pytest
import torch

from refusal_atlas.tasks.engine.direction_engine import DirectionEngine
from tests.naive import naive_f, naive_option1
from refusal_atlas.tasks.engine.prefix import PrefixBatch
from refusal_atlas.tasks.settings import DirectionSettings, EngineSettings
from tests.conftest import PROMPTS, wrap
from tests.tiny import tiny_model


def _cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_gradient_matches_central_finite_differences(tiny64):
    engine = DirectionEngine(tiny64, DirectionSettings(layers=[1, 2]), EngineSettings())
    rendered = [engine.render(t) for t in PROMPTS[:2]]
    batch = PrefixBatch(tiny64.model, rendered, engine.target, engine.pad_id)
    prompts, layers = torch.tensor([0, 1, 0]), torch.tensor([1, 1, 2])
    first = batch.evaluate(prompts, layers, None, grad=True)
    eps = 1e-5
    dim = first.h.shape[1]
    for q in range(len(prompts)):
        # Every coordinate at once: 2 * D queries of the same prompt and layer.
        basis = torch.eye(dim, dtype=torch.float64)
        values = torch.cat([first.h[q] + eps * basis, first.h[q] - eps * basis])
        ev = batch.evaluate(prompts[q].repeat(2 * dim), layers[q].repeat(2 * dim), values, grad=False)
        numeric = (ev.f[:dim] - ev.f[dim:]) / (2 * eps)
        rel = (numeric - first.grad[q]).norm() / first.grad[q].norm()
        assert rel < 1e-3, f"query {q}: relative error {rel:.2e}"


@pytest.mark.parametrize("position", ["last_prompt_token", "instruction_end"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_cached_directions_equal_unbatched_full_recompute(arch, position):
    loaded = wrap(tiny_model(arch, layers=4, hidden=32))
    settings = DirectionSettings(layers=[1, 2], steps=3, eta=0.1, position=position)
    engine = DirectionEngine(loaded, settings, EngineSettings(max_batch=5))
    results = engine.compute_many(PROMPTS)  # different lengths, so rows are left padded
    assert len({len(engine.render(t).input_ids) for t in PROMPTS}) > 2
    for text, result in zip(PROMPTS, results):
        for i, layer in enumerate(engine.layers):
            ref = naive_option1(loaded.model, engine.render(text), engine.target, layer, 3, 0.1)
            assert _cos(result.direction[i], ref["direction"]) >= 0.999
            np.testing.assert_allclose(result.h0[i], ref["h0"], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(result.point[i], ref["point"], rtol=1e-3, atol=1e-4)
        f_naive, _ = naive_f(loaded.model, engine.render(text), engine.target, engine.layers[0])
        assert result.f0[0] == pytest.approx(float(f_naive), abs=1e-4)


@pytest.mark.parametrize("position", ["last_prompt_token", "instruction_end"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_steps_above_layer_l_equal_full_stack_passes(arch, position):
    """The path that runs only layers L+1..N-1 gives the full-stack path's f, h_0, gradient and
    log-odds, for a batch mixing layers (the last one included) and prompts of different lengths."""
    model = tiny_model(arch, layers=4, hidden=32, dtype=torch.float64)
    engine = DirectionEngine(wrap(model), DirectionSettings(position=position), EngineSettings())
    rendered = [engine.render(t) for t in PROMPTS]
    assert len({r.position for r in rendered}) > 2
    upper = PrefixBatch(model, rendered, engine.target, engine.pad_id)
    full = PrefixBatch(model, rendered, engine.target, engine.pad_id, skip_lower_layers=False)
    assert upper._stack is not None and full._stack is None
    prompts = torch.arange(len(PROMPTS)).repeat_interleave(3)
    layers = torch.tensor([0, 1, 3]).repeat(len(PROMPTS))
    first_upper, first_full = upper.evaluate(prompts, layers), full.evaluate(prompts, layers)
    # Then queries in a shuffled order, at values away from h_0, as the walk's later steps are.
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(prompts), generator=generator)
    noise = torch.randn(first_full.h.shape, generator=generator, dtype=torch.float64)
    step = 0.2 * first_full.h.norm(dim=-1, keepdim=True) * noise / noise.norm(dim=-1, keepdim=True)
    values = (first_full.h + step)[order]
    moved_upper = upper.evaluate(prompts[order], layers[order], values)
    moved_full = full.evaluate(prompts[order], layers[order], values)
    for a, b in ((first_upper, first_full), (moved_upper, moved_full)):
        for name in ("f", "h", "grad"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(first_upper.log_odds, first_full.log_odds, rtol=1e-5, atol=1e-8)
    # Log-odds belong to the unmodified model; a moved h gets none on either path.
    assert moved_upper.log_odds is None and moved_full.log_odds is None
    # Not vacuous: below the last layer, h reaches the phrases (at the last layer it does not
    # when h's position is the instruction's end, whose output no phrase token reads).
    assert first_full.grad[layers < 3].norm(dim=-1).min() > 0


def test_skipping_lower_layers_keeps_float32_directions(tiny32):
    settings = DirectionSettings(layers=[1, 2, 3], steps=3, eta=0.1)
    upper = DirectionEngine(tiny32, settings, EngineSettings(max_batch=3)).compute_many(PROMPTS)
    full_stack = EngineSettings(max_batch=3, skip_lower_layers=False)
    full = DirectionEngine(tiny32, settings, full_stack).compute_many(PROMPTS)
    for a, b in zip(upper, full):
        np.testing.assert_allclose(a.h0, b.h0, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a.f0, b.f0, rtol=1e-5, atol=1e-5)
        assert min(_cos(x, y) for x, y in zip(a.direction, b.direction)) > 1 - 1e-5


def _planted_model(layer: int, token: int, seed: int = 0):
    """A tiny llama whose layers after `layer` pass the residual through unchanged, with no final
    norm and an unembedding whose only non-zero row is `token`'s, along a known unit vector u.
    f of a one-token phrase is then a function of u.h alone, so its gradient is along +u."""
    model = tiny_model("llama", layers=4, hidden=32, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    u = torch.randn(32, generator=generator)
    u /= u.norm()
    with torch.no_grad():
        for block in model.model.layers[layer + 1:]:
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        model.lm_head.weight[token] = 3.0 * u
    model.model.norm = torch.nn.Identity()
    return model, u


def test_option1_recovers_a_planted_direction():
    layer = 1
    probe = wrap(tiny_model("llama"))
    phrase = "I"
    token = DirectionEngine(probe, DirectionSettings(phrases=[phrase]), EngineSettings()).target.token_ids[0]
    assert len(token) == 1
    model, u = _planted_model(layer, token[0])
    engine = DirectionEngine(wrap(model), DirectionSettings(layers=[layer], phrases=[phrase], steps=4), EngineSettings())
    for result in engine.compute_many(PROMPTS):
        assert result.error is None
        assert _cos(result.direction[0], u.numpy()) > 0.99
        assert result.effect[0] > 0 and result.f_point[0] > result.f0[0] > result.f_anchor[0]


def test_zero_gradient_fails_the_row_with_its_reason():
    model, _ = _planted_model(1, 0)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # f no longer depends on h at all
    engine = DirectionEngine(wrap(model), DirectionSettings(layers=[1, 2]), EngineSettings())
    result = engine.compute_many(PROMPTS[:2])[0]
    assert result.error is not None and "gradient of f is zero at h_0" in result.error
    assert np.isnan(result.direction).all() and np.isnan(result.effect).all()


def test_early_stop_limits_the_ascent(tiny32):
    base = DirectionEngine(tiny32, DirectionSettings(layers=[2], steps=4), EngineSettings())
    f0 = base.compute_many(PROMPTS[:1])[0].f0[0]
    never = DirectionEngine(tiny32, DirectionSettings(layers=[2], steps=4, early_stop=float(f0) - 1), EngineSettings())
    stopped = never.compute_many(PROMPTS[:1])[0]
    assert stopped.steps[0] == 0
    np.testing.assert_array_equal(stopped.point[0], stopped.h0[0])
    full = base.compute_many(PROMPTS[:1])[0]
    assert full.steps[0] == 4


def test_concurrent_requests_are_micro_batched_with_identical_results(tiny32):
    engine = DirectionEngine(tiny32, DirectionSettings(layers=[1, 3], steps=2), EngineSettings(max_batch=4, max_wait_ms=200))
    alone = engine.compute_many(PROMPTS)
    batches_before = engine.batches
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(engine.compute, PROMPTS))
    assert engine.batches - batches_before < len(PROMPTS)
    for a, b in zip(alone, together):
        np.testing.assert_allclose(a.direction, b.direction, atol=1e-5)


def test_no_gradient_requests_get_activations_only(tiny32):
    engine = DirectionEngine(tiny32, DirectionSettings(layers=[1, 2]), EngineSettings())
    result = engine.compute_many(PROMPTS[:2], gradient=False)[0]
    assert np.isfinite(result.h0).all() and np.isfinite(result.f0).all()
    assert np.isnan(result.direction).all() and result.best_layer == -1 and result.error is None


def test_half_precision_models_score_in_float32():
    loaded = wrap(tiny_model("llama", dtype=torch.bfloat16))
    engine = DirectionEngine(loaded, DirectionSettings(layers=[1], steps=2), EngineSettings())
    rendered = [engine.render(PROMPTS[0])]
    batch = PrefixBatch(loaded.model, rendered, engine.target, engine.pad_id)
    ev = batch.evaluate(torch.tensor([0]), torch.tensor([1]), None, grad=True)
    assert ev.f.dtype == torch.float32 and ev.grad.dtype == torch.float32
    result = engine.compute_many([PROMPTS[0]])[0]
    assert np.isfinite(result.direction).all()
