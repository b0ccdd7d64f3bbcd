"""Shared helpers of the export tests: a small store with every kind of direction, a tiny model
wrapped the way the loader wraps models, and the reference ablation hooks the abliterated weights
are compared with (written here, apart from the code under test)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from refusal_atlas.storage import AtlasStore, StoreSpec
from refusal_atlas.tasks.model.hooks import decoder_layers
from refusal_atlas.tasks.model.loading import LoadedModel, fingerprint
from tests.tiny import CHATML, tiny_model, tiny_tokenizer

LAYERS = (1, 3)
N_PROMPTS = 6


def loaded_tiny(arch: str = "llama", seed: int = 0) -> LoadedModel:
    model = tiny_model(arch, seed=seed)
    tokenizer = tiny_tokenizer()
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=f"tiny-{arch}", revision=None,
                       fingerprint=fingerprint(model, tokenizer, CHATML, torch.float32),
                       device=torch.device("cpu"), dtype=torch.float32, chat_template=CHATML)


def make_store(path: Path, loaded: LoadedModel, layers=LAYERS, seed: int = 0) -> AtlasStore:
    """A store for `loaded` with random rows, concept vectors and one clustering run (2 clusters)."""
    hidden, n_layers = loaded.hidden_size, len(layers)
    spec = StoreSpec(model_id=loaded.model_id, model_revision="", model_fingerprint=loaded.fingerprint,
                     hidden_size=hidden, num_layers=loaded.num_layers, layers=layers,
                     method={"alpha": 0.1, "steps": 1})
    store = AtlasStore.create_or_open(path, spec)
    rows = store.register_prompts([
        {"id": f"p{i}", "text": f"prompt {i}", "label": "harmful" if i % 2 else "harmless",
         "category": "", "source": "tests"} for i in range(N_PROMPTS)])
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal((N_PROMPTS, n_layers, hidden))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    store.write_rows(list(rows.values()), {
        "h0": rng.standard_normal((N_PROMPTS, n_layers, hidden)) * 3,
        "direction": direction,
        "best_layer": np.full(N_PROMPTS, layers[-1], dtype=np.int16),
    })
    store.write_concept(rows=list(rows.values()), direction=direction, anchor=rng.standard_normal((n_layers, hidden)),
                        diff_in_means=rng.standard_normal((n_layers, hidden)), anchor_rows=[0, 2, 4],
                        harmful_rows=[1, 3, 5], data_version=store.data_version())
    centroids = rng.standard_normal((2, hidden))
    store.write_cluster_run("run-test", {
        "prompt_row": (("member",), np.arange(N_PROMPTS)),
        "labels": (("member",), np.array([0, 0, 0, 1, 1, 1])),
        "centroids": (("cluster", "hidden"), centroids),
        "row_layer": (("member",), np.full(N_PROMPTS, layers[-1])),
        "common_direction": (("hidden",), rng.standard_normal(hidden)),
        "raw_centroids": (("raw_cluster", "hidden"), centroids),
        "raw_cluster_layer": (("raw_cluster",), np.full(2, layers[-1])),
        "residual_centroids": (("residual_cluster", "hidden"), rng.standard_normal((3, hidden))),
        "residual_cluster_layer": (("residual_cluster",), np.array([layers[0], layers[-1], layers[-1]])),
    }, {"params": {"layer": None}, "data_version": store.data_version(), "space": "raw"})
    return store


def _project(output, q: torch.Tensor):
    """Remove the span of q [k, D] from a module output (a tensor or a tuple led by one)."""
    if isinstance(output, tuple):
        return (_project(output[0], q), *output[1:])
    basis = q.to(output.dtype)
    return output - (output @ basis.T) @ basis


@contextmanager
def reference_ablation(model: torch.nn.Module, vectors: np.ndarray):
    """Project the span of vectors [k, D] out of the embedding output and of every block's
    attention and MLP module outputs (which removes it from every block's input)."""
    q = torch.linalg.qr(torch.as_tensor(vectors, dtype=torch.float64).T)[0].T  # [k, D]
    modules = [model.get_input_embeddings()]
    for block in decoder_layers(model):
        modules += [getattr(block, "self_attn", None) or block.attn, block.mlp]
    if hasattr(model, "transformer") and hasattr(model.transformer, "wpe"):
        modules.append(model.transformer.wpe)
    handles = []
    try:
        for module in modules:
            handles.append(module.register_forward_hook(lambda _m, _i, out: _project(out, q)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def token_batch(vocab: int, seed: int = 1, batch: int = 2, length: int = 7) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
