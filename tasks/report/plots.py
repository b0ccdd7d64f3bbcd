"""The report's figures as PNG bytes (matplotlib, Agg backend; no display, no files).

Every function takes plain arrays and returns the PNG's bytes, so the report can embed them as
data URIs and nothing depends on a writable directory.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

#: Points drawn in a projection at most (a seeded subsample beyond that keeps files small).
MAX_POINTS = 5_000


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def pca_2d(x: np.ndarray) -> np.ndarray:
    """The first two principal coordinates [n, 2] of rows x [n, d] (centred, for display)."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] < 2:
        return np.zeros((x.shape[0], 2))
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ vt[:2].T
    return np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))


def _scatter(ax, coords: np.ndarray, groups: Sequence, title: str, noise: object = None) -> None:
    """One panel: points coloured by group; `noise` (if given) drawn small and grey."""
    plt = _pyplot()
    groups = np.asarray([str(g) for g in groups], dtype=object)
    names = sorted(set(groups.tolist()) - {str(noise)}, key=lambda g: (len(g), g))
    cmap = plt.get_cmap("tab20", max(len(names), 1))
    if noise is not None and (groups == str(noise)).any():
        pts = coords[groups == str(noise)]
        ax.scatter(pts[:, 0], pts[:, 1], s=4, c="#bbbbbb", label="noise", linewidths=0)
    for i, name in enumerate(names):
        pts = coords[groups == name]
        ax.scatter(pts[:, 0], pts[:, 1], s=8, color=cmap(i), label=name, linewidths=0)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(names) <= 20:
        ax.legend(fontsize=6, markerscale=1.5, loc="best", frameon=False)


def projection_png(
    spaces: Mapping[str, tuple[np.ndarray, np.ndarray]],
    categories: Sequence | None = None,
    seed: int = 0,
) -> bytes:
    """2-D PCA of each space's clustered rows, coloured by cluster and (if given) by category.

    spaces: {name: (embedding [n, k], labels [n])}, one row of panels per space.
    """
    plt = _pyplot()
    columns = 2 if categories is not None else 1
    fig, axes = plt.subplots(len(spaces), columns, figsize=(5 * columns, 4.2 * len(spaces)), squeeze=False)
    for row, (name, (embedding, labels)) in enumerate(spaces.items()):
        keep = np.arange(len(labels))
        if keep.size > MAX_POINTS:
            keep = np.sort(np.random.default_rng(seed).choice(keep.size, MAX_POINTS, replace=False))
        coords = pca_2d(embedding[keep])
        shown = np.asarray(labels)[keep]
        n_clusters = len(set(shown[shown >= 0].tolist()))
        _scatter(axes[row, 0], coords, [f"c{v}" if v >= 0 else "noise" for v in shown],
                 f"{name}: by cluster ({n_clusters} clusters)", noise="noise")
        if categories is not None:
            cats = np.asarray([c if c else "(none)" for c in categories], dtype=object)[keep]
            _scatter(axes[row, 1], coords, cats, f"{name}: by category", noise="(none)")
    fig.tight_layout()
    return _png(fig)


def heatmap_png(
    matrix: np.ndarray,
    rows: Sequence[str],
    columns: Sequence[str],
    title: str,
    colorbar: str,
    symmetric: bool = True,
) -> bytes:
    """A labelled heatmap; symmetric colour limits around 0 unless told otherwise."""
    plt = _pyplot()
    matrix = np.asarray(matrix, dtype=np.float64)
    size = (max(3.5, 0.5 * len(columns) + 2.5), max(2.5, 0.4 * len(rows) + 1.5))
    fig, ax = plt.subplots(figsize=size)
    finite = matrix[np.isfinite(matrix)]
    limit = float(np.abs(finite).max()) if finite.size else 1.0
    limit = limit or 1.0
    kwargs = {"vmin": -limit, "vmax": limit, "cmap": "RdBu_r"} if symmetric else {"cmap": "viridis"}
    image = ax.imshow(matrix, aspect="auto", **kwargs)
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    if matrix.size <= 400:
        for (i, j), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(image, ax=ax, label=colorbar)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def effect_by_layer_png(effect: np.ndarray, layers: Sequence[int], best_layer: np.ndarray | None = None) -> bytes:
    """Effect f(h_0 + alpha ||h_0|| d) - f(h_0) by layer ([n, L]): median and interquartile
    range across prompts, and (if given) how many prompts have each layer as their best."""
    plt = _pyplot()
    effect = np.asarray(effect, dtype=np.float64)
    layers = list(layers)
    panels = 2 if best_layer is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.5), squeeze=False)
    ax = axes[0, 0]
    with np.errstate(all="ignore"):
        q = np.nanpercentile(effect, [25, 50, 75], axis=0) if effect.size else np.full((3, len(layers)), np.nan)
    ax.plot(layers, q[1], marker="o", label="median")
    ax.fill_between(layers, q[0], q[2], alpha=0.3, label="interquartile range")
    ax.set_xlabel("layer")
    ax.set_ylabel("effect on f (nats)")
    ax.set_title(f"effect by layer ({effect.shape[0]} prompts)", fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    if best_layer is not None:
        counts = [int(np.sum(np.asarray(best_layer) == layer)) for layer in layers]
        axes[0, 1].bar([str(layer) for layer in layers], counts)
        axes[0, 1].set_xlabel("layer")
        axes[0, 1].set_ylabel("prompts")
        axes[0, 1].set_title("most effective layer", fontsize=10)
    fig.tight_layout()
    return _png(fig)
