"""Security: no code runs from a store or a model unless the user allows it.

- trust_remote_code is off unless turned on (the loader refusing a model that needs it is
  test_models.py::test_remote_code_stays_off_unless_allowed; here, the defaults that keep it off);
- nothing read from a store is unpickled: every array uses plain codecs, and opening and reading
  a whole store (rows, concept vectors, cluster runs, through every reader) unpickles nothing;
- Prefect task results are JSON;
- names inside a store and store locations are validated (validate_name's own cases are in
  test_store_open.py::test_names_are_validated; here, through the store's write and read calls).
"""

from __future__ import annotations

import json
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import robustness_support as support
import test_store_support as store_support
import xarray as xr

from refusal_atlas.storage import AtlasStore

# Codecs that decode bytes to numbers or UTF-8 strings and nothing else.
PLAIN_CODECS = {"bytes", "zstd", "vlen-utf8", "transpose", "crc32c"}


def test_trust_remote_code_is_off_unless_the_user_turns_it_on():
    from refusal_atlas.flows.cli import build_parser
    from refusal_atlas.flows.run_cli import atlas_settings
    from refusal_atlas.tasks.settings import AtlasSettings, ModelSettings

    assert ModelSettings().trust_remote_code is False and AtlasSettings().model.trust_remote_code is False
    plain = atlas_settings(build_parser().parse_args(["run"]))
    assert plain.model.trust_remote_code is False
    allowed = atlas_settings(build_parser().parse_args(["run", "--trust-remote-code"]))
    assert allowed.model.trust_remote_code is True


def _full_store(path: Path) -> AtlasStore:
    """A store with done rows, concept vectors and a cluster run, as a pipeline leaves it."""
    store = AtlasStore.create_or_open(path, store_support.make_spec())
    store.register_prompts(store_support.records(6))
    for row in range(6):
        store.write_row(row, store_support.row_values(row))
    shape = (len(store_support.LAYERS), store_support.HIDDEN)
    store.write_concept(rows=range(6), direction=np.ones((6, *shape)), anchor=np.zeros(shape),
                        diff_in_means=np.ones(shape), anchor_rows=[0, 3], harmful_rows=[1, 2, 4, 5],
                        data_version=store.data_version())
    store.write_cluster_run("run-1", {"prompt_row": ("member", [1, 2, 4]), "labels": ("member", [0, 0, -1]),
                                      "names": ("member", ["a", "b", "c"])},
                            {"params": {"min_cluster_size": 2}, "data_version": store.data_version()})
    store.consolidate()
    return store


def test_no_array_of_a_store_uses_a_codec_that_could_unpickle(tmp_path):
    _full_store(tmp_path / "atlas.zarr")
    seen = set()
    documents = list((tmp_path / "atlas.zarr").rglob("zarr.json"))
    for document in documents:
        metadata = json.loads(document.read_text())  # the attributes are JSON, by construction
        for entry in [metadata, *metadata.get("consolidated_metadata", {}).get("metadata", {}).values()]:
            if entry.get("node_type") != "array":
                continue
            assert entry["data_type"] != "object", f"{document}: an object array"
            seen |= {codec["name"] for codec in entry["codecs"]}
    assert seen and seen <= PLAIN_CODECS, f"codecs beyond plain numbers and strings: {seen - PLAIN_CODECS}"
    assert len(documents) > 20, "the store's metadata documents were not found"


def test_reading_a_whole_store_unpickles_nothing(tmp_path, monkeypatch):
    from refusal_atlas.tasks.steps.inspection import describe

    uri = str(tmp_path / "atlas.zarr")
    _full_store(tmp_path / "atlas.zarr")
    unpickled = []

    def guarded(name: str):
        real = getattr(pickle, name)

        def call(*args, **kwargs):
            # Dask's tokenizer round-trips its own graph objects through pickle to hash them;
            # that is the one caller allowed. Anything else unpickling during a read is refused.
            if sys._getframe(1).f_globals.get("__name__") == "dask.tokenize":
                return real(*args, **kwargs)
            unpickled.append(name)
            raise AssertionError(f"pickle.{name} was called while reading the store")

        return call

    for name in ("loads", "load", "Unpickler"):
        monkeypatch.setattr(pickle, name, guarded(name))
    store = AtlasStore.open(uri)
    rows = store.to_xarray(done_only=False).load()
    concept = store.read_concept().load()
    runs = [store.read_cluster_run(name).to_xarray() for name in store.list_cluster_runs()]
    plain = xr.open_zarr(uri).load()
    text = describe(uri)
    report = store.verify()
    assert not unpickled
    assert rows.sizes["prompt"] == 6 and np.isfinite(rows["direction"].values).all()
    assert concept["direction"].shape == (6, 2, 16) and runs[0]["names"].values.tolist() == ["a", "b", "c"]
    assert plain["text"].values.tolist()[0] == "prompt number 0" and "rows        6: 6 done" in text
    assert report.ok


def test_every_prefect_task_persists_its_result_as_json(prefect_harness, tiny_model_dir, tmp_path):
    from prefect import Task
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    from refusal_atlas.flows.atlas import refusal_atlas
    from refusal_atlas.tasks.steps import prefect_tasks

    tasks = {name: obj for name, obj in vars(prefect_tasks).items() if isinstance(obj, Task)}
    assert len(tasks) == 6, sorted(tasks)  # write_blocks is the sixth
    for name, task in tasks.items():
        assert task.result_serializer == "json", f"{name} persists with {task.result_serializer!r}"
    from refusal_atlas.tasks.organism import pipeline as organism

    organism_tasks = {name: obj for name, obj in vars(organism).items() if isinstance(obj, Task)}
    assert len(organism_tasks) == 8, sorted(organism_tasks)  # plant_directions is the eighth
    for name, task in organism_tasks.items():
        assert task.result_serializer == "json", f"organism's {name} persists with {task.result_serializer!r}"

    # And what a run really persisted: JSON records whose serializer is JSON, never a pickle.
    storage = Path(PREFECT_LOCAL_STORAGE_PATH.value())
    before = set(storage.rglob("*")) if storage.exists() else set()
    refusal_atlas(support.settings(tiny_model_dir, tmp_path / "atlas.zarr", support.sources(tmp_path, 6, 2)))
    written = [p for p in storage.rglob("*") if p.is_file() and p not in before]
    assert written, f"the run persisted no results under {storage}"
    for path in written:
        record = json.loads(path.read_bytes())
        assert record["metadata"]["serializer"]["type"] == "json", f"{path} was not serialised as JSON"


def test_store_locations_and_names_inside_a_store_are_validated(tmp_path):
    store = _full_store(tmp_path / "atlas.zarr")
    before = {p for p in tmp_path.rglob("*")}
    arrays = {"prompt_row": ("member", [1]), "labels": ("member", [0])}
    attrs = {"params": {}, "data_version": "x"}
    for name in ("../escape", "../../etc", "a/b", "..", "", "run 1"):
        with pytest.raises(ValueError, match="invalid cluster run name"):
            store.write_cluster_run(name, arrays, attrs)
        with pytest.raises(ValueError, match="invalid"):
            store.read_cluster_run(name)
    with pytest.raises(ValueError, match="invalid array name"):
        store.write_cluster_run("run-2", {"../x": ("member", [1])}, attrs)
    after = {p for p in tmp_path.rglob("*")}
    assert after == before, f"a refused name wrote {sorted(map(str, after - before))}"
    assert not (tmp_path / "escape").exists()
    assert store.list_cluster_runs() == ["run-1"]

    for location, words in (("", "empty"), ("  ", "empty"), ("a\x00b", "NUL"), ("s3://", "names no path")):
        with pytest.raises(ValueError, match=words):
            AtlasStore.open(location)
    from refusal_atlas.storage import cluster_run_name

    assert re.fullmatch(r"run-[0-9a-f]{16}", cluster_run_name({"min_cluster_size": 2, "note": "../x"}, "v1"))
