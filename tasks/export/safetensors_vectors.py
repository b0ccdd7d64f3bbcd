"""A safetensors file of unit directions, one tensor per direction and layer, with a JSON header.

There is no shared safetensors convention for steering vectors (steering-vectors keeps them in
memory only), so the file says everything itself: tensor `<direction name>` is the unit vector
[D] float32, and the header's `refusal_atlas` entry (JSON) gives, per tensor, its layer, the
alpha and mean ||h_0|| whose product is the strength-1.0 length, how it was computed, and, for
the whole file, the model fingerprint, the layer convention, the store UUID and the runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refusal_atlas.tasks.export.selection import LAYER_CONVENTION, SelectedDirection

FORMAT = "refusal-atlas-directions/1"


class DirectionFileError(ValueError):
    """A direction file cannot be read, or holds no direction of the asked name."""


@dataclass(frozen=True)
class LoadedDirection:
    """A direction read back from a file: unit vector [D] at a layer, and its strength-1.0 scale."""

    name: str
    layer: int
    vector: np.ndarray
    scale: float
    alpha: float
    info: dict


def write_directions(path: Path, directions: Sequence[SelectedDirection], provenance: dict) -> None:
    """Write every direction as one tensor with a JSON metadata header."""
    from safetensors.numpy import save_file

    names = [d.name for d in directions]
    if len(set(names)) != len(names):
        raise DirectionFileError(f"a direction is named twice in {names}; name each once.")
    header = {
        "format": FORMAT,
        "layer_convention": LAYER_CONVENTION,
        "strength_convention": "strength 1.0 adds alpha * mean_h0_norm * unit vector (the atlas's own alpha)",
        **provenance,
        "runs": sorted({d.run for d in directions if d.run}),
        "directions": {
            d.name: {"layer": d.layer, "kind": d.kind, "how": d.how, "alpha": d.alpha,
                     "mean_h0_norm": d.mean_h0_norm, "n_norm_prompts": d.n_norm_prompts,
                     "scale": d.scale, "run": d.run}
            for d in directions
        },
    }
    tensors = {d.name: np.ascontiguousarray(d.vector, dtype=np.float32) for d in directions}
    save_file(tensors, str(path), metadata={
        "format": FORMAT,
        "model_fingerprint": provenance["model_fingerprint"],
        "store_uuid": provenance["store_uuid"],
        "refusal_atlas": json.dumps(header, sort_keys=True),
    })


def read_header(path: Path) -> dict:
    """The JSON header of a direction file written by `write_directions`."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            meta = handle.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise DirectionFileError(f"{path} is not a readable safetensors file: {err}") from err
    if meta.get("format") != FORMAT or "refusal_atlas" not in meta:
        raise DirectionFileError(f"{path} was not written by `refusal-atlas export` (no {FORMAT} header).")
    return json.loads(meta["refusal_atlas"])


def read_directions(path: Path) -> tuple[dict[str, LoadedDirection], dict]:
    """({name: direction}, header) of a file written by `write_directions`."""
    from safetensors.numpy import load_file

    header = read_header(path)
    tensors = load_file(str(path))
    out = {}
    for name, info in header["directions"].items():
        out[name] = LoadedDirection(name, int(info["layer"]), tensors[name].astype(np.float32),
                                    float(info["scale"]), float(info["alpha"]), info)
    return out, header
