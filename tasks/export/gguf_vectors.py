"""llama.cpp control vectors: one GGUF file per exported direction, and reading them back.

The format, as llama.cpp's loader and repeng read it: tensors named `direction.N`, 1-D F32 of
the model's hidden size, where N is the 0-based decoder block to whose output the vector is
added (Hugging Face `hidden_states[N + 1]`). llama.cpp rejects N = 0 and sums the tensors of
the same N across files, scaled by the strength the user gives (`--control-vector-scaled
FILE:STRENGTH`). repeng writes the architecture `controlvector` with `controlvector.model_hint`
and `controlvector.layer_count` and refuses a file without the hint, so both are written.

The stored vector is scale * d with scale = alpha * mean ||h_0|| (see selection.py), so strength
1.0 reproduces the atlas's own intervention; everything needed to undo that is in the
`refusal_atlas.*` keys.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from refusal_atlas.tasks.export.selection import LAYER_CONVENTION, SelectedDirection

ARCH = "controlvector"
PREFIX = "refusal_atlas."


class ControlVectorError(ValueError):
    """A direction cannot be written as (or a file read as) a llama.cpp control vector."""


def check_layer(direction: SelectedDirection) -> None:
    """llama.cpp ignores no layer silently: it refuses direction.0, so refuse it here first."""
    if direction.layer == 0:
        raise ControlVectorError(
            f"direction {direction.name!r} is at layer 0, and llama.cpp rejects control vectors for "
            "block 0 (direction.0). Export a direction at a later layer, or pass --no-gguf to write "
            "only the safetensors file."
        )


def metadata(direction: SelectedDirection, provenance: dict) -> dict[str, str | int | float]:
    """The `refusal_atlas.*` keys of one control vector (without the prefix)."""
    return {
        "format_version": 1,
        "direction": direction.name,
        "kind": direction.kind,
        "how": direction.how,
        "layer": direction.layer,
        "alpha": direction.alpha,
        "mean_h0_norm": direction.mean_h0_norm,
        "n_norm_prompts": direction.n_norm_prompts,
        "scale": direction.scale,
        "run": direction.run,
        "layer_convention": LAYER_CONVENTION,
        "strength_convention": "strength 1.0 adds alpha * mean_h0_norm * unit direction (the atlas's own alpha)",
        "model_id": provenance["model_id"],
        "model_fingerprint": provenance["model_fingerprint"],
        "hidden_size": provenance["hidden_size"],
        "num_layers": provenance["num_layers"],
        "store_uuid": provenance["store_uuid"],
        "store_uri": provenance["store_uri"],
        "position": provenance["position"],
    }


def write_control_vector(path: Path, direction: SelectedDirection, provenance: dict, model_hint: str) -> None:
    """Write `direction` as a one-layer control vector at `path` (which must not exist)."""
    import gguf

    check_layer(direction)
    vector = (direction.vector.astype(np.float64) * direction.scale).astype(np.float32)  # [D]
    writer = gguf.GGUFWriter(str(path), ARCH)
    try:
        writer.add_string(f"{ARCH}.model_hint", model_hint)
        writer.add_uint32(f"{ARCH}.layer_count", 1)
        for key, value in metadata(direction, provenance).items():
            if value is None:  # GGUF has no null: a key that does not apply (e.g. no run) is left out
                continue
            if isinstance(value, bool) or isinstance(value, str):
                writer.add_string(PREFIX + key, str(value))
            elif isinstance(value, int):
                writer.add_int64(PREFIX + key, value)
            else:
                writer.add_float64(PREFIX + key, float(value))
        writer.add_tensor(f"direction.{direction.layer}", vector)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def read_control_vector(path: Path) -> tuple[dict[int, np.ndarray], dict]:
    """({layer: vector [D] float32}, {key: value}) of a control vector file, keys unprefixed for
    `refusal_atlas.*` and kept whole for the others."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = field.contents()
        fields[key[len(PREFIX):] if key.startswith(PREFIX) else key] = value
    if fields.get("general.architecture") != ARCH:
        raise ControlVectorError(f"{path} is not a control vector (architecture "
                                 f"{fields.get('general.architecture')!r}, expected {ARCH!r}).")
    vectors = {}
    for tensor in reader.tensors:
        if not tensor.name.startswith("direction."):
            continue
        layer = int(tensor.name.split(".", 1)[1])
        vectors[layer] = vectors.get(layer, 0) + np.asarray(tensor.data, dtype=np.float32).reshape(-1)
    return vectors, fields

