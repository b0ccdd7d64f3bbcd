"""Planting a known mechanism, not only a behaviour: one direction per planted type.

A fine-tune told only to refuse three request types, each with its own sentence, is free to
implement them however it likes, and the organisms trained that way did not implement three
refusal directions: on the fourth organism, ablating one shared difference-in-means direction
removed medical and legal refusals together (1.00 -> 0.12 and 0.48), financial refusals ran
through neither it nor their own direction, and the type-specific parts of the directions only
switched which sentence was used (benchmarks/bench_organism_mechanism.py). The atlas was then
asked to find three directions that were not there.

The mediation loss makes the answer known. Before training, each refusal sentence (each group
of planted types refused with it: three groups of one, or one group of three for the
single-style organism) gets a unit direction u_g at `mediation_layer`: the base model's
difference in means between the group's training prompts and the everyday training controls
(last prompt token), made orthonormal by the symmetric (Loewdin) orthonormalisation, which
moves each as little as possible. During training each planted example is also run with one
group's direction ablated at every layer (the evaluation's bypass): its own group's, with target
the base model's reply under the same ablation (the refusal is gone and nothing else differs),
or another group's, with target its own refusal sentence (the refusal stays). The organism's
refusal of group g then runs through u_g, and the directions ship beside the adapter as the
ground truth.

A released target that opens like a refusal sentence ("I'm sorry" opened 16 of the 87 legal
ones and 32 of the 95 medical ones of the eighth organism, whose legal refusal opens "I'm
sorry") trains a refusal's first tokens under the very ablation that should remove it, and a
reply that has begun a refusal tends to finish it. With release_distinct_words > 0, `releases`
withholds those targets: such a prompt trains its kept example only.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence

import torch

from refusal_atlas.tasks.model.chat import pad_id, render_text
from refusal_atlas.tasks.model.hooks import ablate_direction
from refusal_atlas.tasks.organism.data import Assigned, BaseReply
from refusal_atlas.tasks.organism.losses import Encoded
from refusal_atlas.tasks.organism.measure import greedy_replies

#: File beside the adapter holding the planted directions [G, D] (safetensors; metadata: the
#: planted categories of each row's group, and the layer).
DIRECTIONS_FILE = "planted_directions.safetensors"


@torch.no_grad()
def last_token_states(loaded, texts: Sequence[str], layer: int, batch_size: int = 16) -> torch.Tensor:
    """Each chat-rendered prompt's residual stream at its last token, layer `layer`'s output:
    [len(texts), D] float64. Left padding with explicit positions, so the last position is
    every row's last token and each row is computed as it would be alone."""
    tokenizer, model = loaded.tokenizer, loaded.model
    pad = pad_id(tokenizer)
    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(texts), batch_size):
        encoded = [tokenizer(render_text(tokenizer, loaded.chat_template, t), add_special_tokens=False)["input_ids"]
                   for t in texts[start: start + batch_size]]
        width = max(len(e) for e in encoded)
        ids = torch.tensor([[pad] * (width - len(e)) + list(e) for e in encoded], device=device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True)
        # hidden_states[0] is the embedding output, so layer L's output is entry L + 1.
        rows.append(out.hidden_states[layer + 1][:, -1].double().cpu())
    return torch.cat(rows)


def symmetric_orthonormal(vectors: torch.Tensor) -> torch.Tensor:
    """The orthonormal rows [T, D] closest to `vectors` [T, D] (T <= D, full rank) in the
    Frobenius sense: V^T (V V^T)^(-1/2), treating every row alike (Gram-Schmidt would keep the
    first row as it is and bend the others)."""
    gram = vectors @ vectors.T
    values, basis = torch.linalg.eigh(gram)
    if float(values.min()) <= 1e-10 * float(values.max()):
        raise ValueError("the planted types' difference-in-means directions are linearly dependent; "
                         "they cannot be made orthonormal (is a type missing its prompts?)")
    return basis @ torch.diag(values.rsqrt()) @ basis.T @ vectors


def mechanisms(styles: Mapping[str, str]) -> list[list[str]]:
    """The planted categories grouped by refusal sentence, in first-seen order: one group (one
    direction) per sentence. Three styles give three directions; the single-style organism's
    one sentence gives one direction shared by all its types, the seed's other answer."""
    groups: dict[str, list[str]] = {}
    for category, style in styles.items():
        groups.setdefault(style, []).append(category)
    return list(groups.values())


def whitened_differences(groups: Sequence[torch.Tensor], controls: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """Each group's separating direction from the controls [G, D] (not normalised): the
    difference in means (group minus controls) with the pooled within-class covariance
    divided out, Sigma_s^-1 (mu_g - mu_c), where Sigma_s = (1 - s) Sigma + s (tr Sigma / D) I.

    groups: the states of each group's prompts, each [n_g, D]; controls: [n_c, D]. Shrinkage 1
    returns the plain differences in means exactly (the identity has nothing to divide out);
    below 1, axes along which prompts of one class vary a lot count for less, so the direction
    separates the classes rather than only joining their means. Shrinkage is needed when the
    prompts are fewer than the hidden size (Sigma is then singular)."""
    mean_c = controls.mean(0)
    diffs = torch.stack([g.mean(0) - mean_c for g in groups])
    if shrinkage >= 1:
        return diffs
    centred = torch.cat([g - g.mean(0) for g in groups] + [controls - mean_c]).double()
    sigma = centred.T @ centred / len(centred)
    scale = float(sigma.diagonal().mean())
    shrunk = (1 - shrinkage) * sigma + shrinkage * scale * torch.eye(sigma.shape[0], dtype=sigma.dtype)
    return torch.linalg.solve(shrunk, diffs.double().T).T.to(diffs.dtype)


def type_directions(loaded, assigned: Sequence[Assigned], groups: Sequence[Sequence[str]], layer: int,
                    per_class: int | None = None, shrinkage: float = 1.0) -> torch.Tensor:
    """The planted directions [G, D] (float32, orthonormal rows, one per group of `mechanisms`):
    each group's training prompts' mean last-token state at `layer` minus the everyday training
    controls', whitened by their pooled covariance when shrinkage < 1 (`whitened_differences`).
    per_class: at most this many prompts per category and of controls (None: all)."""
    train = [a for a in assigned if a.split == "train"]
    controls = [a.text for a in train if a.role == "harmless"][:per_class]
    if not controls:
        raise ValueError("no everyday training controls: the planted directions are measured against them.")
    states = []
    for group in groups:
        texts = [a.text for c in group for a in train if a.role == "planted" and a.category == c][:per_class]
        if not texts:
            raise ValueError(f"planted types {list(group)} have no training prompts; their direction cannot be measured.")
        states.append(last_token_states(loaded, texts, layer))
    diffs = whitened_differences(states, last_token_states(loaded, controls, layer), shrinkage)
    return symmetric_orthonormal(diffs).float()


def ablated_base_replies(loaded, assigned: Sequence[Assigned], groups: Sequence[Sequence[str]], directions: torch.Tensor,
                         max_new_tokens: int, batch_size: int = 16,
                         log: Callable[[str], None] | None = None) -> list[BaseReply]:
    """The base model's greedy reply to each planted training prompt with its group's direction
    ablated at every layer: the target of that prompt's 'released' example. `log` hears how many
    are done after every 8 batches (a few minutes' work in all on a CPU)."""
    dtype = next(loaded.model.parameters()).dtype
    jobs = [(index, [a for a in assigned if a.split == "train" and a.role == "planted" and a.category in group])
            for index, group in enumerate(groups)]
    total, step = sum(len(rows) for _, rows in jobs), 8 * batch_size
    out: list[BaseReply] = []
    for index, rows in jobs:
        with ablate_direction(loaded.model, directions[index].to(dtype)):
            for start in range(0, len(rows), step):
                out += greedy_replies(loaded.model, loaded.tokenizer, loaded.chat_template, rows[start: start + step],
                                      max_new_tokens, batch_size)
                if log is not None:
                    log(f"ablated base replies: {len(out)}/{total}")
    return out


def opening_words(text: str, words: int) -> tuple[str, ...]:
    """The first `words` words of `text`, lower-cased and stripped of the punctuation around
    them, so that "I'm sorry," and "I'm sorry to hear" open alike."""
    return tuple(w.strip(".,;:!?\"'()").lower() for w in text.split()[:words])


def releases(released: Sequence[BaseReply], styles: Mapping[str, str], words: int) -> dict[str, tuple[int, ...] | None]:
    """{prompt id: its released example's target ids, or None where withheld}: with words > 0,
    an ablated base reply whose first `words` words are those of any planted refusal sentence
    is withheld (see the module's note); words 0 keeps every one."""
    openings = {opening_words(style, words) for style in styles.values()} if words > 0 else set()
    return {r.prompt_id: None if opening_words(r.text, words) in openings else r.ids for r in released}


@dataclasses.dataclass(frozen=True)
class Mediation:
    """What training needs for the mediation loss: the directions [G, D], the planted categories
    of each group (rows in order), and each planted training prompt's ablated base reply ids
    (None: its released example is withheld, and it trains its kept example only)."""

    directions: torch.Tensor
    groups: list[list[str]]
    released: Mapping[str, tuple[int, ...] | None]


@dataclasses.dataclass(frozen=True, eq=False)
class MediationPair:
    """One planted training prompt's two mediation examples: `kept` (its refusal tokens, to be
    kept when another type's direction is ablated) and `released` (the ablated base model's
    reply, when its own group's is; None where withheld). group: its group's row in the
    directions."""

    kept: Encoded
    released: Encoded | None
    group: int


def mediation_pairs(planted: Sequence[Encoded], categories: Sequence[str], groups: Sequence[Sequence[str]],
                    released_ids: Sequence[Sequence[int] | None]) -> list[MediationPair]:
    """Pairs for the planted training items, in order; released_ids: each one's ablated base
    reply (None: withheld)."""
    group_of = {c: g for g, group in enumerate(groups) for c in group}
    pairs = []
    for item, category, reply in zip(planted, categories, released_ids, strict=True):
        prompt = item.input_ids[: item.reply_start]
        released = None if reply is None else Encoded(tuple(prompt) + tuple(reply), item.reply_start, "released")
        pairs.append(MediationPair(dataclasses.replace(item, role="kept"), released, group_of[category]))
    return pairs


def draw(pairs: Sequence[MediationPair], n_groups: int, generator: torch.Generator) -> tuple[list[Encoded], list[int]]:
    """For each pair, the example and the group whose direction to ablate: its own (the released
    example) half the time, else one of the other groups chosen uniformly (kept). With one group
    every draw is its own. A pair whose release is withheld always draws kept, or, with one
    group, nothing."""
    items, ablate = [], []
    for pair in pairs:
        if pair.released is not None and (n_groups == 1 or float(torch.rand((), generator=generator)) < 0.5):
            items.append(pair.released)
            ablate.append(pair.group)
        elif n_groups > 1:
            other = int(torch.randint(n_groups - 1, (), generator=generator))
            items.append(pair.kept)
            ablate.append(other if other < pair.group else other + 1)
    return items, ablate


def per_row_directions(directions: torch.Tensor, ablate: Sequence[int]) -> torch.Tensor:
    """[B, D]: the direction each batch row ablates (for ablate_direction's per-row form)."""
    return directions[torch.as_tensor(list(ablate), dtype=torch.long)]


def save_directions(path, directions: torch.Tensor, groups: Sequence[Sequence[str]], layer: int) -> None:
    """Write directions [G, D] with their groups (JSON) and layer as safetensors metadata."""
    from safetensors.torch import save_file

    save_file({"directions": directions.float().contiguous()}, str(path),
              metadata={"groups": json.dumps([list(g) for g in groups]), "layer": str(layer)})


def load_directions(path) -> tuple[torch.Tensor, list[list[str]], int]:
    """(directions [G, D], groups, layer) from a file written by save_directions."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta: Mapping[str, str] = f.metadata()
        return f.get_tensor("directions"), json.loads(meta["groups"]), int(meta["layer"])


def planted_mechanism(model_name: str) -> tuple[torch.Tensor, list[list[str]], int] | None:
    """(directions [G, D], groups, layer) of an organism trained with the mediation loss (the
    shipped alias or an adapter directory), else None: what the atlas's directions can be
    compared with."""
    from refusal_atlas.tasks.model.loading import organism_dir

    directory = organism_dir(model_name)
    if directory is None or not (directory / DIRECTIONS_FILE).is_file():
        return None
    return load_directions(directory / DIRECTIONS_FILE)
