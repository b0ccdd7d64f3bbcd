"""Which directions an atlas store offers for export, by name, and reading one out.

Names (none contains ':' or '@', so `FILE:NAME` on the command line stays unambiguous):

- `<run>.cluster-<k>`: cluster k of the clustering run `<run>` in the space that run chose;
  `<run>.raw-cluster-<k>` and `<run>.residual-cluster-<k>` name either space explicitly;
- `<run>.common`: the run's common (mean) direction;
- `diff-in-means.L<layer>`: the difference-in-means direction (concept vectors) at a stored layer;
- `prompt-<prompt id>.L<layer>`: one done prompt's Option 1 direction at a stored layer.

Every direction comes out as a unit vector [D] at one model layer with the scale that makes
strength 1.0 mean the atlas's own intervention: the atlas adds alpha * ||h_0|| * d, so the scale
is the store's method alpha times the mean ||h_0|| at that layer over the store's done prompts
(one number per layer, since an exported vector cannot depend on the prompt it meets).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from refusal_atlas.storage.clusters import ClusterRun

#: How a stored vector relates to the model's computation; written into every export.
LAYER_CONVENTION = (
    "layer N is the 0-based decoder block whose output receives the vector: Hugging Face "
    "hidden_states[N + 1], llama.cpp control vector tensor direction.N"
)
_LAYERED = re.compile(r"^(?P<base>diff-in-means|prompt-(?P<prompt>[^.]+))\.L(?P<layer>\d+)$")
_RUN = re.compile(r"^(?P<run>[^.]+)\.(?:(?P<space>raw|residual)-)?(?:cluster-(?P<k>\d+)|(?P<common>common))$")
#: Prompt-direction names shown in a listing before the rest are only counted.
_LISTED_PROMPTS = 3


class SelectionError(ValueError):
    """A direction name the store does not offer; the message lists what it does offer."""


@dataclass(frozen=True)
class SelectedDirection:
    """A unit direction [D] at a model layer, with everything an export records about it.

    scale = alpha * mean_h0_norm: the length of the vector that strength 1.0 adds.
    """

    name: str
    kind: str
    layer: int
    vector: np.ndarray = field(repr=False)
    alpha: float
    mean_h0_norm: float
    n_norm_prompts: int
    run: str | None
    how: str

    @property
    def scale(self) -> float:
        return self.alpha * self.mean_h0_norm


def offered(store) -> list[str]:
    """Every name `select` accepts, except that prompt directions are summarised."""
    names = []
    for run_name in store.list_cluster_runs():
        run = store.read_cluster_run(run_name)
        chosen = run.attrs.get("space", "raw")
        names += [f"{run_name}.cluster-{k}" for k in range(run["centroids"].shape[0])]
        for space in ("raw", "residual"):
            if space != chosen and f"{space}_centroids" in run.arrays:
                names += [f"{run_name}.{space}-cluster-{k}" for k in range(run[f"{space}_centroids"].shape[0])]
        names.append(f"{run_name}.common")
    layers = [int(layer) for layer in store.layers]
    try:
        store.read_concept()
        names += [f"diff-in-means.L{layer}" for layer in layers]
    except KeyError:
        pass
    return names


def listing(store) -> str:
    """A human-readable list of the names a store offers (prompt directions as a pattern)."""
    names = offered(store)
    ids = [str(i) for i in store.prompt_ids(store.done_rows())]
    lines = [f"  {name}" for name in names]
    if ids:
        examples = ", ".join(f"prompt-{i}.L{int(store.layers[0])}" for i in ids[:_LISTED_PROMPTS])
        lines.append(f"  prompt-<id>.L<layer> for any of {len(ids)} done prompts and layers "
                     f"{[int(x) for x in store.layers]} (e.g. {examples})")
    if not lines:
        return f"{store.uri} offers no directions yet: run the atlas on it first."
    return f"directions in {store.uri}:\n" + "\n".join(lines)


def _unknown(store, name: str, why: str) -> SelectionError:
    return SelectionError(f"{why}: {name!r}. Pick one of these names:\n{listing(store)}")


def mean_h0_norm(store, layer: int) -> tuple[float, int]:
    """The mean ||h_0|| at a stored layer over the store's done prompts, and how many there were."""
    position = _layer_position(store, layer)
    h0 = store.dask_array("h0")  # [n, L, D], done rows only, read lazily a block of rows at a time
    norms = np.sqrt((h0[:, position, :].astype(np.float64) ** 2).sum(axis=-1)).compute()
    norms = norms[np.isfinite(norms)]
    if norms.size == 0:
        raise SelectionError(f"{store.uri} has no done prompt with h_0 at layer {layer}, so the "
                             "atlas's scale there is unknown; compute directions first.")
    return float(norms.mean()), int(norms.size)


def _layer_position(store, layer: int) -> int:
    matches = np.flatnonzero(np.asarray(store.layers) == layer)
    if matches.size == 0:
        raise SelectionError(f"layer {layer} is not stored in {store.uri} (stored layers: "
                             f"{[int(x) for x in store.layers]}); name one of them.")
    return int(matches[0])


def select(store, name: str, alpha: float | None = None) -> SelectedDirection:
    """The direction `name` (see the module docstring) as a unit vector with its scale.

    alpha: strength-1.0 size in units of the mean ||h_0|| (default: the store's method alpha).
    """
    alpha = float(store.spec.method.get("alpha", 0.1)) if alpha is None else float(alpha)
    kind, layer, vector, run, how = _read(store, name)
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0:
        hint = (" Only prompts with a gradient label (by default harmful or unlabelled) get Option 1 directions."
                if kind == "prompt" else "")
        raise SelectionError(f"direction {name!r} is zero or not finite in {store.uri}; it cannot be exported.{hint}")
    mean_norm, count = mean_h0_norm(store, layer)
    return SelectedDirection(name, kind, layer, (vector / norm).astype(np.float32), alpha, mean_norm,
                             count, run, how)


def _read(store, name: str) -> tuple[str, int, np.ndarray, str | None, str]:
    layered = _LAYERED.match(name)
    if layered:
        layer = int(layered["layer"])
        if layer not in [int(x) for x in store.layers]:
            raise _unknown(store, name, f"layer {layer} is not stored")
        position = _layer_position(store, layer)
        if layered["prompt"] is None:
            try:
                concept = store.read_concept()
            except KeyError:
                raise _unknown(store, name, "the store has no concept vectors") from None
            vector = np.asarray(concept["diff_in_means"].values[position], dtype=np.float64)
            return "diff_in_means", layer, vector, None, "normalise(mean h harmful - mean h harmless), Option 2 baseline"
        try:
            row = store.row_of(layered["prompt"])
        except KeyError:
            raise _unknown(store, name, "no such prompt id") from None
        vector = np.asarray(store.read_rows([row], ["direction"])["direction"][0, position], dtype=np.float64)
        return "prompt", layer, vector, None, "Option 1: normalise(point_K - anchor_K) of one prompt"
    by_run = _RUN.match(name)
    if not by_run:
        raise _unknown(store, name, "not a direction name")
    run_name = by_run["run"]
    try:
        run = store.read_cluster_run(run_name)
    except KeyError:
        raise _unknown(store, name, "no complete clustering run of that name") from None
    if by_run["common"]:
        return "common", _common_layer(run), np.asarray(run["common_direction"], np.float64), run_name, \
            "normalise(mean of the clustered unit directions)"
    space = by_run["space"] or run.attrs.get("space", "raw")
    k = int(by_run["k"])
    centroids = run[f"{space}_centroids"] if f"{space}_centroids" in run.arrays else run["centroids"]
    if k >= centroids.shape[0]:
        raise _unknown(store, name, f"run {run_name} has {centroids.shape[0]} clusters in the {space} space")
    layer = int(run[f"{space}_cluster_layer"][k]) if f"{space}_cluster_layer" in run.arrays else _common_layer(run)
    if layer < 0:
        raise SelectionError(f"cluster {k} of {run_name} has no known layer; it cannot be exported.")
    return "cluster", layer, np.asarray(centroids[k], np.float64), run_name, \
        f"normalised mean of the unit directions of cluster {k}'s members ({space} space clustering)"


def _common_layer(run: ClusterRun) -> int:
    """The layer most clustered rows were read at (the only one when the run chose a layer)."""
    layers = np.asarray(run["row_layer"]) if "row_layer" in run.arrays else np.asarray([], np.int64)
    layers = layers[layers >= 0]
    if layers.size == 0:
        raise SelectionError(f"clustering run {run.name} records no layer for its rows; it cannot be exported.")
    values, counts = np.unique(layers, return_counts=True)
    return int(values[np.argmax(counts)])
