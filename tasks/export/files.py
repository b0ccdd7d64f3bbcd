"""Writing an export directory whole or not at all, and reading `FILE[:NAME]` direction arguments.

An export or an abliterated model is written into a hidden sibling directory first and renamed
into place at the end, so a failure part way leaves nothing at the path the user gave, and an
existing path is refused before anything is computed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from refusal_atlas.tasks.export import gguf_vectors, safetensors_vectors
from refusal_atlas.tasks.export.safetensors_vectors import DirectionFileError, LoadedDirection


class OutputExistsError(FileExistsError):
    """The output path exists; nothing is overwritten."""


def check_new_output(path: Path) -> Path:
    path = Path(path).expanduser()
    if path.exists():
        raise OutputExistsError(f"output {path} already exists and is never overwritten: remove it, "
                                "or give a new path with --output.")
    if not path.parent.is_dir():
        raise OutputExistsError(f"the folder {path.parent} that would hold {path.name} does not exist: create it first.")
    return path


@contextlib.contextmanager
def new_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary directory beside `path` that becomes `path` when the block succeeds."""
    path = check_new_output(path)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield staging
        os.rename(staging, path)  # atomic on one file system; fails if path appeared meanwhile
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def provenance(store) -> dict:
    """What every exported file says about the store and model it came from."""
    spec = store.spec
    return {
        "model_id": spec.model_id,
        "model_revision": spec.model_revision,
        "model_fingerprint": spec.model_fingerprint,
        "hidden_size": spec.hidden_size,
        "num_layers": spec.num_layers,
        "position": spec.position,
        "store_uuid": store.store_uuid,
        "store_uri": store.uri,
    }


def export_directions(store, directions, output: Path, model_hint: str, gguf: bool = True) -> list[Path]:
    """Write `directions.safetensors` and (if `gguf`) one `<name>.gguf` per direction into the new
    directory `output`. Every check runs before the first byte is written."""
    if gguf:
        for direction in directions:
            gguf_vectors.check_layer(direction)
    info = provenance(store)
    with new_directory(output) as staging:
        safetensors_vectors.write_directions(staging / "directions.safetensors", directions, info)
        if gguf:
            for direction in directions:
                gguf_vectors.write_control_vector(staging / f"{direction.name}.gguf", direction, info, model_hint)
        written = sorted(p.name for p in staging.iterdir())
    return [Path(output) / name for name in written]


def split_spec(spec: str) -> tuple[Path, str | None]:
    """`FILE[:NAME]` -> (file, name or None). A name never holds ':' (see selection.py)."""
    head, colon, tail = spec.rpartition(":")
    if colon and head and not Path(spec).exists():
        return Path(head).expanduser(), tail
    return Path(spec).expanduser(), None


def load_directions(specs: Sequence[str]) -> tuple[list[LoadedDirection], dict]:
    """The directions named by `FILE[:NAME]` arguments and the provenance they share.

    A .gguf control vector gives its one layer (its vector divided by its recorded scale); a
    .safetensors file gives the named direction, or its only one when no name is given.
    """
    out: list[LoadedDirection] = []
    shared: dict = {}
    for spec in specs:
        path, name = split_spec(spec)
        if not path.is_file():
            raise DirectionFileError(f"direction file {path} does not exist; give FILE[:NAME] with a file "
                                     "written by `refusal-atlas export`.")
        direction, info = _load_one(path, name)
        for key in ("model_fingerprint", "hidden_size"):
            if shared.setdefault(key, info[key]) != info[key]:
                raise DirectionFileError(f"{spec} comes from {key} {info[key]}, but an earlier direction from "
                                         f"{shared[key]}: give directions of one model.")
        shared.update({k: info[k] for k in ("model_id", "store_uuid")})
        out.append(direction)
    return out, shared


def _load_one(path: Path, name: str | None) -> tuple[LoadedDirection, dict]:
    if path.suffix == ".gguf":
        vectors, fields = gguf_vectors.read_control_vector(path)
        if "model_fingerprint" not in fields:
            raise DirectionFileError(f"{path} is a control vector without refusal-atlas metadata, so its model "
                                     "cannot be checked; export it with `refusal-atlas export`.")
        if name not in (None, fields["direction"]):
            raise DirectionFileError(f"{path} holds only {fields['direction']!r}, not {name!r}.")
        layer, vector = next(iter(vectors.items()))
        scale = float(fields["scale"])
        unit = (vector.astype(np.float64) / scale).astype(np.float32)
        return LoadedDirection(fields["direction"], layer, unit, scale, float(fields["alpha"]), fields), fields
    directions, header = safetensors_vectors.read_directions(path)
    if name is None:
        if len(directions) != 1:
            raise DirectionFileError(f"{path} holds {len(directions)} directions; choose one as "
                                     f"{path}:NAME, with NAME one of {sorted(directions)}.")
        name = next(iter(directions))
    if name not in directions:
        raise DirectionFileError(f"{path} has no direction {name!r}; it holds {sorted(directions)}.")
    return directions[name], header


def check_model(directions: Sequence[LoadedDirection], info: dict, loaded, allow_other_model: bool = False) -> None:
    """Refuse directions that do not fit the loaded model: hidden size, layer, fingerprint."""
    for direction in directions:
        if direction.vector.shape != (loaded.hidden_size,):
            raise DirectionFileError(
                f"direction {direction.name!r} has hidden size {direction.vector.shape[0]}, but model "
                f"{loaded.model_id} has {loaded.hidden_size}: it comes from another model "
                f"({info.get('model_id')}); use that model or export a direction of this one.")
        if not 0 <= direction.layer < loaded.num_layers:
            raise DirectionFileError(
                f"direction {direction.name!r} is for layer {direction.layer}, but model {loaded.model_id} "
                f"has layers 0..{loaded.num_layers - 1}: use the model it was found on ({info.get('model_id')}).")
    if info["model_fingerprint"] != loaded.fingerprint and not allow_other_model:
        raise DirectionFileError(
            f"the directions come from model {info.get('model_id')} with fingerprint {info['model_fingerprint']}, "
            f"but the model loaded has fingerprint {loaded.fingerprint}: load the same model (and dtype), or pass "
            "--allow-other-model if you know they share a residual stream (e.g. a fine-tune of it).")
