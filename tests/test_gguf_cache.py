"""The converted-GGUF cache: a second load reads the saved conversion, which is the same model
(weights, tokenizer, chat template, fingerprint); damaged, unwritable or disabled caches fall
back to converting, and say so where the next load will pay for it again."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from refusal_atlas.tasks.model import gguf_cache
from refusal_atlas.tasks.model.loading import fingerprint, load_model
from refusal_atlas.tasks.settings import ModelSettings
from tests.tiny import CHATML, tiny_model, tiny_tokenizer


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv(gguf_cache.ENV, str(root))
    return root


@pytest.fixture
def gguf(tmp_path):
    """Stands in for a GGUF file: the cache keys on the file's bytes and never parses it."""
    path = tmp_path / "model.gguf"
    path.write_bytes(b"not really a gguf file, only its bytes are hashed")
    return path


def _load_dir(directory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)


class Converter:
    """A conversion that counts its calls and returns a tiny tied-embedding llama."""

    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        model = tiny_model("llama", seed=3)
        tokenizer = tiny_tokenizer()
        return model, tokenizer


def _same_model(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def test_second_load_reads_the_cache_and_gives_the_same_model(cache, gguf):
    convert = Converter()
    first_model, first_tok = gguf_cache.load_gguf(gguf, convert, _load_dir)
    again_model, again_tok = gguf_cache.load_gguf(gguf, convert, _load_dir)
    assert convert.calls == 1
    _same_model(first_model, again_model)
    assert again_tok.get_vocab() == first_tok.get_vocab()
    assert again_tok.chat_template == CHATML
    assert fingerprint(again_model, again_tok, CHATML, torch.float32) == fingerprint(
        first_model, first_tok, CHATML, torch.float32)
    entries = list((cache / "gguf").iterdir())
    assert len(entries) == 1 and not any(p.name.count(".tmp-") for p in entries)
    marker = json.loads((entries[0] / "refusal_atlas_gguf.json").read_text())
    assert marker["gguf_sha256"] == gguf_cache.file_sha256(gguf)


def test_a_changed_file_is_a_new_entry(cache, gguf):
    convert = Converter()
    gguf_cache.load_gguf(gguf, convert, _load_dir)
    gguf.write_bytes(b"other bytes")
    gguf_cache.load_gguf(gguf, convert, _load_dir)
    assert convert.calls == 2
    assert len(list((cache / "gguf").iterdir())) == 2


def test_an_entry_without_a_matching_marker_is_not_read(cache, gguf, caplog):
    convert = Converter()
    gguf_cache.load_gguf(gguf, convert, _load_dir)
    (entry,) = (cache / "gguf").iterdir()
    (entry / "refusal_atlas_gguf.json").write_text("{broken")
    with caplog.at_level(logging.WARNING):
        gguf_cache.load_gguf(gguf, convert, _load_dir)
    assert convert.calls == 2
    assert "damaged GGUF cache entry" in caplog.text and "delete the folder" in caplog.text


def test_cache_off_writes_nothing(tmp_path, gguf, monkeypatch):
    monkeypatch.setenv(gguf_cache.ENV, "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    convert = Converter()
    gguf_cache.load_gguf(gguf, convert, _load_dir)
    gguf_cache.load_gguf(gguf, convert, _load_dir)
    assert convert.calls == 2
    assert not (tmp_path / "xdg").exists()


def test_an_unwritable_cache_still_loads_and_says_how_to_fix_it(tmp_path, gguf, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(gguf_cache.ENV, str(blocker / "cache"))
    with caplog.at_level(logging.WARNING):
        model, _ = gguf_cache.load_gguf(gguf, Converter(), _load_dir)
    assert isinstance(model, torch.nn.Module)
    assert gguf_cache.ENV in caplog.text and "writable" in caplog.text


def test_an_entry_written_by_another_process_first_is_kept(cache, gguf):
    model, tokenizer = Converter()()
    key = gguf_cache.entry_key(gguf)
    first = gguf_cache.store_entry(gguf, key, model, tokenizer)
    before = (first / "model.safetensors").stat().st_mtime_ns
    second = gguf_cache.store_entry(gguf, key, *Converter()())
    assert second == first
    assert (first / "model.safetensors").stat().st_mtime_ns == before
    assert [p.name for p in (cache / "gguf").iterdir()] == [first.name]


@pytest.mark.integration
def test_the_default_model_from_the_cache_is_the_model_from_its_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv(gguf_cache.ENV, "off")
    direct = load_model(ModelSettings(name="smollm2"))
    monkeypatch.setenv(gguf_cache.ENV, str(tmp_path / "cache"))
    load_model(ModelSettings(name="smollm2"))  # converts and caches
    cached = load_model(ModelSettings(name="smollm2"))
    assert cached.fingerprint == direct.fingerprint
    assert cached.chat_template == direct.chat_template
    _same_model(direct.model, cached.model)
    text = "How do I bake bread?<|im_end|>"
    assert cached.tokenizer(text).input_ids == direct.tokenizer(text).input_ids
