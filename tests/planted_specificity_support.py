"""A tiny model with one or two planted refusal directions, each tied to its own prompt set.

Built on test_engine's planted model: blocks after layer 1 pass the residual through, there is
no final norm, and the unembedding's only non-zero rows are the refusal phrases' tokens. Here
layer 0's attention is uniform (zero queries and keys) and copies the plane of u_A and u_B from
every earlier position to the last one, so a prompt's marker word ("sea" or "car") reaches the
position f is read at. Token embeddings have no component in that plane except the markers':
"sea" tokens carry u_A; "car" tokens carry u_B, or u_A when only one direction is planted. The
phrase "I" is raised by u_A, the phrase "How" by u_B. So ablating u_A removes the refusal of
the sea prompts and leaves the car prompts' alone, and with one planted direction both sets
refuse through u_A.
"""

from __future__ import annotations

import torch

from refusal_atlas.tasks.engine.direction_engine import DirectionEngine
from refusal_atlas.tasks.settings import DirectionSettings, EngineSettings
from tests.conftest import wrap
from tests.tiny import tiny_model

LAYER = 1
PHRASES = ["I", "How"]  # one token each in the tiny tokenizer
SEA = [f"Write {i} lines about the sea" + " and the sea" * (i % 3) for i in range(12)]
CAR = [f"Tell me {i} facts about the car" + " and the car" * (i % 3) for i in range(12)]


def _plane(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(32, n, generator=torch.Generator().manual_seed(seed)))
    return q.T.contiguous()  # [n, 32] orthonormal rows


def planted_specificity_engine(two: bool, gain: float = 12.0):
    """(engine, u [2, 32]): u[0] = u_A, u[1] = u_B (unused by the model when two is False)."""
    probe = DirectionEngine(wrap(tiny_model("llama")), DirectionSettings(phrases=PHRASES), EngineSettings())
    phrase_tokens = [ids[0] for ids in probe.target.token_ids]
    tokenizer = probe.loaded.tokenizer
    # The words' first tokens only: "car" ends in a token that the chat template's "user" uses too.
    marks = [{tokenizer.encode(" " + word, add_special_tokens=False)[0]} for word in ("sea", "car")]
    model = tiny_model("llama", layers=4, hidden=32, seed=0)
    u = _plane(2, 3)
    with torch.no_grad():
        for block in model.model.layers:
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
        attn = model.model.layers[0].self_attn
        attn.q_proj.weight.zero_()
        attn.k_proj.weight.zero_()
        attn.v_proj.weight.zero_()
        attn.v_proj.weight[0], attn.v_proj.weight[1] = u[0], u[1]
        attn.o_proj.weight[:, 0], attn.o_proj.weight[:, 1] = gain * u[0], gain * u[1]
        emb = model.model.embed_tokens.weight
        emb -= (emb @ u.T) @ u  # no token carries the plane ...
        for token in marks[0]:
            emb[token] += 3.0 * u[0]  # ... but the markers
        for token in marks[1]:
            emb[token] += 3.0 * (u[1] if two else u[0])
        model.lm_head.weight.zero_()
        model.lm_head.weight[phrase_tokens[0]] = 3.0 * u[0]
        model.lm_head.weight[phrase_tokens[1]] = 3.0 * u[1] if two else 0.0
    model.model.norm = torch.nn.Identity()
    settings = DirectionSettings(layers=[LAYER], phrases=PHRASES, steps=1)
    return DirectionEngine(wrap(model), settings, EngineSettings()), u.numpy()
