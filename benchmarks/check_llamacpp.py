"""A real llama.cpp loads the exported control vector on the default model's GGUF file and moves
the logits the way the hook does.

A check to run by hand, `python -m pytest benchmarks/check_llamacpp.py`, on a machine where a
llama.cpp wheel loads. `make test` leaves it out: no llama.cpp from PyPI loads on the development
and CI machines (see below), so there it could only ever be skipped.

llama.cpp here comes from the PyPI wheel `llama-cpp-py-sync` (prebuilt libllama, CFFI ABI mode;
`pip install --no-deps llama-cpp-py-sync`); the test is skipped without it, or where its library
does not load (on the development machines it needs glibc 2.38 and they have 2.36, so this test
has not yet run anywhere). Its C API takes a
control vector as one flat buffer, so the file is turned into that buffer the way llama.cpp's
own loader (common_control_vector_load) does: tensor direction.N goes to offset (N - 1) * n_embd,
scaled by the strength, and the layer range is 1..n_layer. The model is quantised (Q4_1) and
llama.cpp quantises activations on the fly, so logits agree only roughly with the dequantised
transformers model; what must agree is the change the vector makes, and it must agree best at
the layer the file names.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refusal_atlas.tasks.export.safetensors_vectors import LoadedDirection

pytestmark = pytest.mark.integration
llama_cpp = pytest.importorskip("llama_cpp_py_sync")


def _library_error() -> str | None:
    """Why the wheel's libllama cannot be loaded here, if it cannot (its wheels, though tagged
    manylinux2014, need glibc 2.38; Debian 12 has 2.36)."""
    from llama_cpp_py_sync._cffi_bindings import get_lib

    try:
        get_lib()
    except (OSError, RuntimeError) as err:
        return str(err)
    return None


_ERROR = _library_error()
if _ERROR is not None:
    pytest.skip(f"llama-cpp-py-sync is installed but its libllama does not load: {_ERROR}", allow_module_level=True)


def _cpp_logits(llm, tokens: list[int]) -> np.ndarray:
    """Next-token logits [V] after `tokens`, from a cleared context."""
    llm._clear_context_state()
    llm._eval_tokens(tokens, 0)
    pointer = llm._lib.llama_get_logits_ith(llm._ctx, -1)
    return np.frombuffer(llm._ffi.buffer(pointer, 4 * llm.n_vocab), dtype=np.float32).copy()


def _apply_file(llm, path, strength: float) -> None:
    """What `llama-cli --control-vector-scaled path:strength` does, through the C API."""
    from refusal_atlas.tasks.export.gguf_vectors import read_control_vector

    vectors, _ = read_control_vector(path)
    n_embd, n_layer = llm.n_embd, llm._lib.llama_model_n_layer(llm._model)
    data = np.zeros(n_embd * max(vectors), dtype=np.float32)
    for layer, vector in vectors.items():
        assert layer > 0
        data[(layer - 1) * n_embd: layer * n_embd] += strength * vector
    buffer = llm._ffi.from_buffer("float[]", data)
    assert llm._lib.llama_set_adapter_cvec(llm._ctx, buffer, data.size, n_embd, 1, n_layer) == 0


def test_llama_cpp_control_vector_moves_logits_like_the_hook(tmp_path):
    from refusal_atlas.storage import AtlasStore, StoreSpec
    from refusal_atlas.tasks.export import files, selection
    from refusal_atlas.tasks.export.steer import add_directions
    from refusal_atlas.tasks.model.chat import render_prompt
    from refusal_atlas.tasks.model.loading import get_model, smollm2_gguf_path
    from refusal_atlas.tasks.settings import ModelSettings

    loaded = get_model(ModelSettings())
    layer, hidden = 18, loaded.hidden_size
    spec = StoreSpec(model_id=loaded.model_id, model_revision="", model_fingerprint=loaded.fingerprint,
                     hidden_size=hidden, num_layers=loaded.num_layers, layers=(layer,), method={"alpha": 0.1})
    store = AtlasStore.create_or_open(tmp_path / "atlas.zarr", spec)
    rows = list(store.register_prompts([{"id": "p0", "text": "x", "label": "", "category": "", "source": "t"}]).values())
    rng = np.random.default_rng(0)
    h0 = rng.standard_normal((1, 1, hidden)) * 20
    store.write_rows(rows, {"h0": h0})
    store.write_concept(rows=[], direction=np.zeros((0, 1, hidden)), anchor=h0[0], diff_in_means=rng.standard_normal((1, hidden)),
                        anchor_rows=rows, harmful_rows=[], data_version=store.data_version())
    files.export_directions(store, [selection.select(store, f"diff-in-means.L{layer}", alpha=2.0)], tmp_path / "out",
                            "llama")
    path = tmp_path / "out" / f"diff-in-means.L{layer}.gguf"
    [direction], _ = files.load_directions([str(path)])

    tokens = list(render_prompt(loaded.tokenizer, loaded.chat_template, "Write a short poem about the sea.").input_ids)
    llm = llama_cpp.Llama(str(smollm2_gguf_path()), n_ctx=256, verbose=False)
    try:
        cpp_base = _cpp_logits(llm, tokens)
        _apply_file(llm, path, 1.0)
        cpp_moved = _cpp_logits(llm, tokens) - cpp_base
    finally:
        llm.close()

    def hf_moved(at: int) -> np.ndarray:
        moved = LoadedDirection(direction.name, at, direction.vector, direction.scale, direction.alpha, {})
        ids = torch.tensor([tokens])
        with torch.no_grad():
            base = loaded.model(input_ids=ids).logits[0, -1]
            with add_directions(loaded.model, [moved], alpha=None):
                steered = loaded.model(input_ids=ids).logits[0, -1]
        return (steered - base).double().numpy()

    def cosine(a, b):
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    same = cosine(cpp_moved, hf_moved(layer))
    print(f"cosine of logit changes, llama.cpp vs hook: at layer {layer} {same:.4f}, "
          f"{layer - 1}: {cosine(cpp_moved, hf_moved(layer - 1)):.4f}, {layer + 1}: {cosine(cpp_moved, hf_moved(layer + 1)):.4f}; "
          f"norms {np.linalg.norm(cpp_moved):.3f} vs {np.linalg.norm(hf_moved(layer)):.3f}")
    assert np.linalg.norm(cpp_moved) > 1.0
    assert same > 0.95
    assert same > cosine(cpp_moved, hf_moved(layer - 1)) and same > cosine(cpp_moved, hf_moved(layer + 1))
    assert np.linalg.norm(cpp_moved) == pytest.approx(np.linalg.norm(hf_moved(layer)), rel=0.15)
