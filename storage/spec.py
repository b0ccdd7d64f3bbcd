"""What a store is for (``StoreSpec``), its provenance attributes, and the checks on reopening.

A store holds rows of one model (by fingerprint), one position convention, one layer set and one
set of method parameters. Rows computed under different settings cannot be compared, so opening
a store with a spec that differs in any of these is an error, never a silent mix.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from refusal_atlas.storage.errors import StoreMismatchError, StoreSchemaError
from refusal_atlas.storage.layout import ATTRS_KEY, SCHEMA_VERSION


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces, so equal settings give equal text (and hashes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def json_value(value: Any, what: str) -> Any:
    """Round-trip through JSON: tuples become lists, and anything not JSON fails here, early."""
    try:
        return json.loads(canonical_json(value))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be plain JSON (dicts, lists, str, numbers, bools): {exc}") from exc


@dataclass(frozen=True)
class StoreSpec:
    """Plain-Python description of the store to create or the one a caller expects to open.

    ``layers`` are the model layer indices stored along the ``layer`` axis, in that order;
    ``method`` holds every parameter that changes a row's numbers (steps, eta, alpha, refusal
    phrases, dtype...); ``packages`` adds version strings to the recorded zarr/numpy versions.
    """

    model_id: str
    model_revision: str
    model_fingerprint: str
    hidden_size: int
    num_layers: int
    layers: tuple[int, ...]
    position: str = "last_prompt_token"
    method: Mapping[str, Any] = field(default_factory=dict)
    packages: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        layers = tuple(int(layer) for layer in self.layers)
        if not layers:
            raise ValueError("StoreSpec.layers is empty; give the model layer indices to store")
        if len(set(layers)) != len(layers):
            raise ValueError(f"StoreSpec.layers {list(layers)} repeats a layer")
        if int(self.num_layers) < 1 or int(self.hidden_size) < 1:
            raise ValueError("StoreSpec.num_layers and hidden_size must be positive")
        bad = [layer for layer in layers if not 0 <= layer < int(self.num_layers)]
        if bad:
            raise ValueError(f"layers {bad} are outside the model's 0..{int(self.num_layers) - 1}")
        if not self.model_fingerprint:
            raise ValueError("StoreSpec.model_fingerprint is empty; the store keys on it")
        if not self.position:
            raise ValueError("StoreSpec.position is empty, e.g. 'last_prompt_token'")
        # The dataclass is frozen, so normalised values are set through object.__setattr__.
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "hidden_size", int(self.hidden_size))
        object.__setattr__(self, "num_layers", int(self.num_layers))
        object.__setattr__(self, "method", json_value(dict(self.method), "StoreSpec.method"))
        packages = {str(k): str(v) for k, v in dict(self.packages).items()}
        object.__setattr__(self, "packages", packages)

    def __hash__(self) -> int:
        return hash(canonical_json(self.to_json()))

    def to_json(self) -> dict[str, Any]:
        return {
            "model": {
                "id": self.model_id,
                "revision": self.model_revision,
                "fingerprint": self.model_fingerprint,
            },
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "layers": list(self.layers),
            "position": self.position,
            "method": dict(self.method),
        }

    def provenance(self, store_uuid: str, block_rows: int) -> dict[str, Any]:
        """The root attributes of a new store made from this spec, in blocks of ``block_rows``."""
        return {
            "schema_version": SCHEMA_VERSION,
            "block_rows": int(block_rows),
            "store_uuid": store_uuid,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **self.to_json(),
            "packages": {**package_versions(), **self.packages},
        }

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> StoreSpec:
        """Rebuild the spec a store was made with from its provenance attributes."""
        model = attrs["model"]
        return cls(
            model_id=model["id"],
            model_revision=model["revision"],
            model_fingerprint=model["fingerprint"],
            hidden_size=attrs["hidden_size"],
            num_layers=attrs["num_layers"],
            layers=tuple(attrs["layers"]),
            position=attrs["position"],
            method=attrs["method"],
            packages=attrs.get("packages", {}),
        )


def package_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions recorded in every store: zarr, numpy, python and refusal-atlas, plus the
    distributions named in ``extra`` ("not installed" for one that is not)."""
    from importlib import metadata

    import numpy
    import zarr

    versions = {"zarr": zarr.__version__, "numpy": numpy.__version__}
    versions["python"] = platform.python_version()
    for name in ("refusal-atlas", *extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def read_provenance(root_attrs: Mapping[str, Any], uri: str) -> dict[str, Any]:
    """The provenance dictionary of a store, after checking that this code can read it."""
    attrs = root_attrs.get(ATTRS_KEY)
    if not isinstance(attrs, Mapping):
        raise StoreSchemaError(
            f"{uri} is a Zarr group but not a refusal-atlas store (no {ATTRS_KEY!r} attributes); "
            "give a new path for a new store"
        )
    version = attrs.get("schema_version")
    if isinstance(version, int) and version < SCHEMA_VERSION:
        # Version 1 kept one row per chunk; reading it through the block code would treat every
        # row as a block of one and writing it would break the one-writer-per-block rule.
        raise StoreSchemaError(
            f"{uri} has store schema_version {version} (one chunk per prompt row), but this "
            f"refusal-atlas writes schema version {SCHEMA_VERSION} (rows in blocks). Copy it into "
            f"the new layout with `refusal-atlas migrate {uri} NEW_PATH` (the old store is only "
            "read), then use NEW_PATH; or keep using the refusal-atlas that wrote it"
        )
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise StoreSchemaError(
            f"{uri} has store schema_version {version!r}, but this refusal-atlas reads schema "
            f"versions up to {SCHEMA_VERSION}: upgrade refusal-atlas "
            "(pip install -U refusal-atlas) to open this store"
        )
    return dict(attrs)


def check_compatible(attrs: Mapping[str, Any], spec: StoreSpec, uri: str) -> None:
    """Raise ``StoreMismatchError`` if rows made under ``spec`` must not go into this store."""
    have = StoreSpec.from_attrs(attrs)
    advice = f"use a new store path for this setting, or open {uri} with the settings it was made with"
    if have.model_fingerprint != spec.model_fingerprint:
        raise StoreMismatchError(
            f"{uri} was made for model fingerprint {have.model_fingerprint} ({have.model_id}), "
            f"but the model given has fingerprint {spec.model_fingerprint} ({spec.model_id}): "
            f"use a new store path for this model, or the same model as the store"
        )
    checks = (
        ("position convention", have.position, spec.position),
        ("layers", list(have.layers), list(spec.layers)),
        ("hidden_size", have.hidden_size, spec.hidden_size),
        ("num_layers", have.num_layers, spec.num_layers),
    )
    for what, stored, given in checks:
        if stored != given:
            raise StoreMismatchError(f"{uri} holds {what} {stored!r}, but {given!r} was asked: {advice}")
    if canonical_json(have.method) != canonical_json(spec.method):
        raise StoreMismatchError(
            f"{uri} was made with method parameters {canonical_json(have.method)}, but "
            f"{canonical_json(spec.method)} was given; rows computed with different method "
            f"parameters would be silently mixed: {advice}"
        )
