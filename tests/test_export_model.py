"""Steering and abliteration on tiny models: the exported vector applied by llama.cpp's convention,
orthogonalised weights against hook ablation, tied embeddings, and directions of another model."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from refusal_atlas.flows.cli import main as cli_main
from refusal_atlas.tasks.export import files, selection
from refusal_atlas.tasks.export.abliterate import orthogonalised_copy, write_abliterated
from refusal_atlas.tasks.export.safetensors_vectors import DirectionFileError, LoadedDirection
from refusal_atlas.tasks.export.steer import ablate_span, add_directions
from refusal_atlas.tasks.model.hooks import decoder_layers
from refusal_atlas.tasks.model.loading import ModelSettings, load_model
from tests.test_export_support import loaded_tiny, make_store, reference_ablation, token_batch
from tests.tiny import save_tiny_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny llama, its store, and an export of a cluster direction at layer 1 and one at layer 3."""
    root = tmp_path_factory.mktemp("steer")
    loaded = loaded_tiny("llama")
    store = make_store(root / "atlas.zarr", loaded)
    names = ["run-test.residual-cluster-0", "run-test.cluster-1"]
    files.export_directions(store, [selection.select(store, n) for n in names], root / "out", "llama")
    return loaded, store, root / "out"


def _logits(model, ids, **kwargs):
    with torch.no_grad():
        return model(input_ids=ids, **kwargs).logits


def test_steering_equals_the_control_vector_added_to_block_n_output(exported):
    loaded, _store, out = exported
    model, ids = loaded.model, token_batch(loaded.model.config.vocab_size)
    reader = gguf.GGUFReader(str(out / "run-test.residual-cluster-0.gguf"))
    [tensor] = reader.tensors
    layer = int(tensor.name.removeprefix("direction."))
    vector = torch.as_tensor(np.array(tensor.data, dtype=np.float32))  # [D]: scale * unit, strength 1.0
    assert layer == 1
    # The loader's convention, written out here: the vector is added to block N's output.
    handle = decoder_layers(model)[layer].register_forward_hook(lambda _m, _i, output: output + vector)
    try:
        convention = model(input_ids=ids, output_hidden_states=True)
    finally:
        handle.remove()
    base = model(input_ids=ids, output_hidden_states=True)
    moved = convention.hidden_states[layer + 1] - base.hidden_states[layer + 1]  # [B, T, D]
    torch.testing.assert_close(moved, vector.expand_as(moved), atol=1e-5, rtol=0)
    torch.testing.assert_close(convention.hidden_states[layer], base.hidden_states[layer], atol=0, rtol=0)
    [direction], _ = files.load_directions([str(out / "run-test.residual-cluster-0.gguf")])
    with add_directions(model, [direction], alpha=None):
        steered = _logits(model, ids)
    assert (steered - base.logits).abs().max() > 1e-3  # the vector does something
    torch.testing.assert_close(steered, convention.logits, atol=1e-5, rtol=0)
    # Twice the atlas's alpha is llama.cpp strength 2.0.
    handle = decoder_layers(model)[layer].register_forward_hook(lambda _m, _i, output: output + 2 * vector)
    try:
        doubled = _logits(model, ids)
    finally:
        handle.remove()
    with add_directions(model, [direction], alpha=2 * direction.alpha):
        torch.testing.assert_close(_logits(model, ids), doubled, atol=1e-5, rtol=0)
    torch.testing.assert_close(_logits(model, ids), base.logits, atol=0, rtol=0)  # hooks are gone


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("k", [1, 3])
def test_orthogonalised_weights_equal_hook_ablation(arch, k):
    loaded = loaded_tiny(arch)
    model = loaded.model
    before = {name: t.clone() for name, t in model.state_dict().items()}
    vectors = np.random.default_rng(k).standard_normal((k, loaded.hidden_size))
    ids = token_batch(model.config.vocab_size)
    twin, summary = orthogonalised_copy(model, vectors)
    with reference_ablation(model, vectors):
        reference = _logits(model, ids)
    with ablate_span(model, vectors):
        hooked = _logits(model, ids)
    abliterated = _logits(twin, ids)
    assert (abliterated - _logits(model, ids)).abs().max() > 1e-3
    torch.testing.assert_close(abliterated, reference, atol=1e-4, rtol=0)
    torch.testing.assert_close(hooked, reference, atol=1e-4, rtol=0)
    assert summary["rank"] == k and summary["untied_lm_head"] == (arch in ("qwen2", "gpt2"))
    for name, tensor in model.state_dict().items():  # the caller's model is untouched
        torch.testing.assert_close(tensor, before[name], atol=0, rtol=0)
    if summary["untied_lm_head"]:
        torch.testing.assert_close(twin.get_output_embeddings().weight, model.get_input_embeddings().weight)
        assert twin.get_output_embeddings().weight.data_ptr() != twin.get_input_embeddings().weight.data_ptr()


def test_abliterated_directory_reloads_with_an_untied_head_and_a_card(tmp_path):
    loaded = loaded_tiny("qwen2")
    direction = LoadedDirection("d", 2, np.random.default_rng(0).standard_normal(32).astype(np.float32), 1.0, 0.1,
                                {"kind": "cluster", "how": "test"})
    info = {"model_id": "tiny-qwen2", "model_fingerprint": loaded.fingerprint, "store_uri": "x", "store_uuid": "u"}
    write_abliterated(loaded, [direction], info, tmp_path / "abl", "tiny-qwen2")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "abl").eval()
    ids = token_batch(loaded.model.config.vocab_size)
    twin, _ = orthogonalised_copy(loaded.model, direction.vector[None])
    torch.testing.assert_close(_logits(reloaded, ids), _logits(twin, ids), atol=1e-5, rtol=0)
    assert reloaded.config.tie_word_embeddings is False
    card = (tmp_path / "abl" / "README.md").read_text()
    assert "untied" in card and "| d | 2 |" in card
    with pytest.raises(FileExistsError, match="already exists"):
        write_abliterated(loaded, [direction], info, tmp_path / "abl", "tiny-qwen2")


def test_directions_of_another_model_or_a_missing_layer_are_refused(exported):
    loaded, _store, out = exported
    [direction], info = files.load_directions([str(out / "run-test.cluster-1.gguf")])
    files.check_model([direction], info, loaded)  # its own model: fine
    wider = loaded_tiny("llama")
    wider = type(wider)(**{**wider.__dict__, "model": _wider_model()})
    with pytest.raises(DirectionFileError, match="hidden size 32, but model .* has 64"):
        files.check_model([direction], info, wider)
    deep = LoadedDirection("deep", 7, direction.vector, 1.0, 0.1, {})
    with pytest.raises(DirectionFileError, match="layer 7.*layers 0..3"):
        files.check_model([deep], info, loaded)
    other = loaded_tiny("llama", seed=5)
    with pytest.raises(DirectionFileError, match="fingerprint.*--allow-other-model"):
        files.check_model([direction], info, other)
    files.check_model([direction], info, other, allow_other_model=True)
    with pytest.raises(DirectionFileError, match="holds 2 directions.*run-test.cluster-1"):
        files.load_directions([str(out / "directions.safetensors")])
    with pytest.raises(DirectionFileError, match="no direction 'nope'"):
        files.load_directions([f"{out / 'directions.safetensors'}:nope"])


def _wider_model():
    from tests.tiny import tiny_model

    return tiny_model("llama", hidden=64)


def test_steer_and_abliterate_commands_on_a_model_directory(tmp_path, capsys):
    model_dir = save_tiny_model(tmp_path / "model")
    loaded = load_model(ModelSettings(name=str(model_dir)))
    store = make_store(tmp_path / "atlas.zarr", loaded)
    assert cli_main(["export", store.uri, "--direction", "run-test.cluster-1", "--output", str(tmp_path / "out")]) == 0
    vector = f"{tmp_path / 'out' / 'directions.safetensors'}:run-test.cluster-1"
    capsys.readouterr()
    code = cli_main(["steer", "--model", str(model_dir), "--direction", vector, "--alpha", "5", "--mode", "add",
                     "--max-new-tokens", "4", "Write a poem about the sea.", "Give me a recipe for bread."])
    printed = capsys.readouterr().out
    assert code == 0 and printed.count("prompt: ") == 2 and "strict" in printed and "strength 50" in printed
    code = cli_main(["abliterate", "--model", str(model_dir), "--direction", vector, "--output", str(tmp_path / "abl")])
    assert code == 0 and (tmp_path / "abl" / "README.md").exists()
    other = save_tiny_model(tmp_path / "other", seed=3)
    code = cli_main(["abliterate", "--model", str(other), "--direction", vector, "--output", str(tmp_path / "abl2")])
    assert code == 2 and "--allow-other-model" in capsys.readouterr().err and not (tmp_path / "abl2").exists()
