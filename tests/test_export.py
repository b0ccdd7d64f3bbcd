"""Export: names a store offers, GGUF control vectors and safetensors read back, and bad input."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from safetensors import safe_open

from refusal_atlas.flows.cli import main as cli_main
from refusal_atlas.tasks.export import files, selection
from refusal_atlas.tasks.export.gguf_vectors import ControlVectorError
from refusal_atlas.tasks.export.selection import SelectionError
from tests.test_export_support import N_PROMPTS, loaded_tiny, make_store

NAMES = ["run-test.cluster-1", "run-test.common", "run-test.residual-cluster-0", "diff-in-means.L3", "prompt-p3.L1"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "atlas.zarr", loaded_tiny("llama"))


def test_listing_offers_every_kind_of_direction(store):
    names = selection.offered(store)
    for name in ("run-test.cluster-0", "run-test.cluster-1", "run-test.residual-cluster-2", "run-test.common",
                 "diff-in-means.L1", "diff-in-means.L3"):
        assert name in names
    assert "prompt-<id>.L<layer>" in selection.listing(store)


def test_selected_vectors_are_the_stored_ones_with_the_atlas_scale(store):
    run = store.read_cluster_run("run-test")
    expected = {
        "run-test.cluster-1": (run["centroids"][1], 3),
        "run-test.common": (run["common_direction"], 3),
        "run-test.residual-cluster-0": (run["residual_centroids"][0], 1),
        "diff-in-means.L3": (store.read_concept()["diff_in_means"].values[1], 3),
        "prompt-p3.L1": (store.read_rows([store.row_of("p3")], ["direction"])["direction"][0, 0], 1),
    }
    h0 = store.read_rows(range(N_PROMPTS), ["h0"])["h0"].astype(np.float64)  # [n, L, D]
    for name, (vector, layer) in expected.items():
        chosen = selection.select(store, name)
        assert chosen.layer == layer
        np.testing.assert_allclose(chosen.vector, vector / np.linalg.norm(vector), atol=1e-6)
        mean_norm = np.linalg.norm(h0[:, list(store.layers).index(layer)], axis=-1).mean()
        assert chosen.scale == pytest.approx(0.1 * mean_norm)
        assert chosen.n_norm_prompts == N_PROMPTS
    assert selection.select(store, "run-test.common", alpha=0.5).scale == pytest.approx(5 * selection.select(
        store, "run-test.common").scale)


def test_gguf_and_safetensors_read_back_the_same_vectors_names_and_metadata(store, tmp_path):
    chosen = [selection.select(store, name) for name in NAMES]
    out = tmp_path / "export"
    files.export_directions(store, chosen, out, "llama")
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{n}.gguf" for n in NAMES] + ["directions.safetensors"])
    for direction in chosen:
        reader = gguf.GGUFReader(str(out / f"{direction.name}.gguf"))
        fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
        assert fields["general.architecture"] == "controlvector"
        assert fields["controlvector.model_hint"] == "llama"
        assert fields["controlvector.layer_count"] == 1
        assert fields["refusal_atlas.direction"] == direction.name
        assert fields["refusal_atlas.layer"] == direction.layer
        assert fields["refusal_atlas.model_fingerprint"] == store.spec.model_fingerprint
        assert fields["refusal_atlas.store_uuid"] == store.store_uuid
        assert fields["refusal_atlas.alpha"] == pytest.approx(0.1)
        assert fields["refusal_atlas.scale"] == pytest.approx(direction.scale)
        assert fields.get("refusal_atlas.run") == direction.run
        [tensor] = reader.tensors
        assert tensor.name == f"direction.{direction.layer}"
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
        assert tuple(int(n) for n in tensor.shape) == (store.spec.hidden_size,)
        np.testing.assert_allclose(np.asarray(tensor.data), direction.vector * direction.scale, rtol=1e-6)
    with safe_open(str(out / "directions.safetensors"), framework="numpy") as handle:
        header = json.loads(handle.metadata()["refusal_atlas"])
        assert sorted(handle.keys()) == sorted(NAMES)
        for direction in chosen:
            np.testing.assert_array_equal(handle.get_tensor(direction.name), direction.vector)
            entry = header["directions"][direction.name]
            assert (entry["layer"], entry["alpha"]) == (direction.layer, direction.alpha)
            assert entry["mean_h0_norm"] == pytest.approx(direction.mean_h0_norm)
    assert header["model_fingerprint"] == store.spec.model_fingerprint
    assert header["store_uuid"] == store.store_uuid and header["runs"] == ["run-test"]
    assert "hidden_states[N + 1]" in header["layer_convention"]


def test_an_unknown_name_lists_what_can_be_chosen_and_writes_nothing(store, tmp_path, capsys):
    with pytest.raises(SelectionError, match="run-test.cluster-0") as err:
        selection.select(store, "run-test.cluster-9")
    assert "has 2 clusters" in str(err.value)
    for bad in ("nonsense", "diff-in-means.L2", "prompt-nobody.L1", "run-other.common"):
        with pytest.raises(SelectionError, match="Pick one of these names"):
            selection.select(store, bad)
    code = cli_main(["export", store.uri, "--direction", "run-test.cluster-9", "--output", str(tmp_path / "out")])
    assert code == 2 and "Pick one of these names" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_layer_zero_is_refused_for_llama_cpp_and_nothing_is_written(tmp_path, capsys):
    store = make_store(tmp_path / "atlas.zarr", loaded_tiny("llama"), layers=(0, 2))
    out = tmp_path / "out"
    with pytest.raises(ControlVectorError, match="--no-gguf"):
        files.export_directions(store, [selection.select(store, "diff-in-means.L0")], out, "llama")
    assert not out.exists()
    assert cli_main(["export", store.uri, "--direction", "diff-in-means.L2", "diff-in-means.L0",
                     "--output", str(out)]) == 2
    assert "layer 0" in capsys.readouterr().err and not out.exists()
    assert cli_main(["export", store.uri, "--direction", "diff-in-means.L0", "--output", str(out), "--no-gguf"]) == 0
    assert [p.name for p in out.iterdir()] == ["directions.safetensors"]


def test_an_existing_output_directory_is_never_touched(store, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    code = cli_main(["export", store.uri, "--direction", "run-test.common", "--output", str(out)])
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging directory left behind


def test_export_command_lists_and_writes(store, tmp_path, capsys):
    assert cli_main(["export", store.uri]) == 0
    assert "run-test.cluster-1" in capsys.readouterr().out
    out = tmp_path / "out"
    assert cli_main(["export", store.uri, "--direction", "run-test.cluster-1", "--output", str(out),
                     "--alpha", "0.5", "--model-hint", "llama"]) == 0
    printed = capsys.readouterr().out
    assert "--control-vector-scaled" in printed and "run-test.cluster-1.gguf" in printed
    loaded, info = files.load_directions([str(out / "run-test.cluster-1.gguf")])
    from_safetensors, _ = files.load_directions([f"{out / 'directions.safetensors'}:run-test.cluster-1"])
    assert loaded[0].alpha == 0.5 and loaded[0].layer == 3
    np.testing.assert_allclose(loaded[0].vector, from_safetensors[0].vector, atol=1e-6)
    assert info["model_fingerprint"] == store.spec.model_fingerprint


def test_a_prompt_without_an_option_1_direction_is_refused_with_the_reason(tmp_path):
    store = make_store(tmp_path / "atlas.zarr", loaded_tiny("llama"))
    rows = store.register_prompts([{"id": "calm", "text": "a harmless prompt", "label": "harmless",
                                    "category": "", "source": "tests"}])
    store.write_rows(list(rows.values()), {"h0": np.ones((1, 2, store.spec.hidden_size))})
    with pytest.raises(SelectionError, match="not finite.*Option 1 directions"):
        selection.select(store, "prompt-calm.L1")
