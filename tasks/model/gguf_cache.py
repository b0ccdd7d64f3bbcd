"""A local cache of GGUF models converted to a Hugging Face model directory.

transformers reads a GGUF file by parsing its metadata and de-quantising every tensor, which
for the default model (SmolLM2-135M, Q4_1) takes about 40 s on a 2-core CPU, in every process
that loads it: each run, each Dask worker, each test process. The converted model is the same
every time, so it is saved once (safetensors weights in the de-quantised dtype, config,
tokenizer and chat template) and read back in a few seconds afterwards (6 s against 42 s in a
fresh process, benchmarks/bench_model_load.py). The
weights are stored unchanged, so a model read from the cache is the model converted from the
file (same tensors, same fingerprint).

An entry is keyed by the GGUF file's SHA-256 and the transformers version that converted it (a
later version may convert differently). It is written to a private temporary folder and renamed
into place, so concurrent loaders never read a half-written entry; when two convert at once,
the first rename wins and the other's copy is dropped.

Where: `$REFUSAL_ATLAS_CACHE` if set, else `$XDG_CACHE_HOME/refusal-atlas`, else
`~/.cache/refusal-atlas`; entries live in its `gguf/` folder (about 4 bytes per parameter:
540 MB for the default model). `REFUSAL_ATLAS_CACHE=off` turns the cache off.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

ENV = "REFUSAL_ATLAS_CACHE"
_MARKER = "refusal_atlas_gguf.json"
_HASH_BLOCK = 1 << 22


def cache_root() -> Path | None:
    """The cache folder, or None when the cache is off."""
    configured = os.environ.get(ENV)
    if configured is not None:
        return None if configured.strip().lower() in ("off", "0", "false", "none", "") else Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "refusal-atlas"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def entry_key(gguf: Path) -> dict:
    """What an entry must match: the file's content and the converting transformers version."""
    import transformers

    return {"gguf_sha256": file_sha256(gguf), "transformers": transformers.__version__}


def _entry_dir(root: Path, key: dict) -> Path:
    return root / "gguf" / f"{key['gguf_sha256'][:24]}-tf{key['transformers']}"


def cached_entry(gguf: Path) -> tuple[Path | None, dict]:
    """The entry for this file (None when there is none or the cache is off) and its key."""
    root = cache_root()
    key = entry_key(gguf)
    if root is None:
        return None, key
    directory = _entry_dir(root, key)
    marker = directory / _MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text(encoding="utf-8")) == key:
                return directory, key
        except (OSError, ValueError):
            pass
        logger.warning("ignoring a damaged GGUF cache entry at %s (its marker does not match); "
                       "delete the folder to rebuild it", directory)
    return None, key


def store_entry(gguf: Path, key: dict, model, tokenizer) -> Path | None:
    """Save a converted model as this file's entry; None when the cache is off or not writable
    (logged, since the next load will convert again)."""
    root = cache_root()
    if root is None:
        return None
    directory = _entry_dir(root, key)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=directory.name + ".tmp-", dir=directory.parent))
    except OSError as err:
        logger.warning("could not create the GGUF cache under %s (%s); set %s to a writable folder, "
                       "or to 'off'", root, err, ENV)
        return None
    try:
        _save_weights_and_config(model, staging)
        tokenizer.save_pretrained(staging)
        # The marker is written last: an entry without it is incomplete and never read.
        (staging / _MARKER).write_text(json.dumps(key), encoding="utf-8")
        try:
            staging.rename(directory)
        except OSError:
            if not (directory / _MARKER).is_file():
                raise
            logger.info("another process cached %s first; keeping its entry", gguf.name)
        return directory
    except OSError as err:
        logger.warning("could not write the GGUF cache entry %s (%s); set %s to a writable folder, "
                       "or to 'off'", directory, err, ENV)
        return None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _save_weights_and_config(model, directory: Path) -> None:
    """The de-quantised weights (safetensors, tied tensors once) and the config without its GGUF
    quantisation entry. `save_pretrained` refuses a model that came from GGUF (it still carries the
    GGUF quantiser, though its weights are plain tensors), hence the two parts by hand."""
    from safetensors.torch import save_model

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(directory)
    save_model(model, str(directory / "model.safetensors"), metadata={"format": "pt"})


def load_gguf(gguf: Path, convert: Callable[[], tuple], load_dir: Callable[[Path], tuple]) -> tuple:
    """(model, tokenizer) of a GGUF file: read from the cache when it holds the file, else
    converted by `convert()` and cached. `load_dir(directory)` loads a model directory."""
    if cache_root() is None:
        return convert()  # the cache is off: no need to hash the file
    directory, key = cached_entry(gguf)
    if directory is not None:
        return load_dir(directory)
    model, tokenizer = convert()
    store_entry(gguf, key, model, tokenizer)
    return model, tokenizer
