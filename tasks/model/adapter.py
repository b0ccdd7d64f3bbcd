"""LoRA adapters as plain safetensors, applied without peft: W += scale * B @ A.

An adapter directory holds `adapter.safetensors` (for every adapted linear layer, named as in
the model's state dict without `.weight`, the tensors `<module>.lora_A` [r, in] and
`<module>.lora_B` [out, r]) and `adapter.json` (the base model it belongs to, its fingerprint,
the scale alpha / r, rank and target modules). The refusal model organism ships one (issue 15);
`ModelSettings(name="smollm2-organism")` loads SmolLM2 with it merged into a private copy, and
a directory holding an adapter loads the same way.

Merging is done in float32 whatever the adapter's storage dtype, so loading is deterministic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

ADAPTER_FILE = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"


class AdapterError(RuntimeError):
    """An adapter cannot be read or does not fit the model; the message says why."""


@dataclass(frozen=True)
class Adapter:
    """LoRA factors by module name, and how to apply them."""

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (A [r, in], B [out, r])
    scale: float
    config: dict

    @property
    def n_parameters(self) -> int:
        return sum(a.numel() + b.numel() for a, b in self.factors.values())


def is_adapter_dir(path: Path | str) -> bool:
    path = Path(path)
    return (path / ADAPTER_FILE).is_file() and (path / ADAPTER_CONFIG).is_file()


def save_adapter(adapter: Adapter, directory: Path | str, dtype: torch.dtype = torch.float32) -> Path:
    """Write the adapter's safetensors and JSON config into `directory`; returns the tensor file."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (a, b) in sorted(adapter.factors.items()):
        tensors[f"{name}.lora_A"] = a.detach().to("cpu", dtype).contiguous()
        tensors[f"{name}.lora_B"] = b.detach().to("cpu", dtype).contiguous()
    path = directory / ADAPTER_FILE
    save_file(tensors, str(path), metadata={"format": "refusal-atlas-lora", "scale": repr(adapter.scale)})
    config = {**adapter.config, "scale": adapter.scale, "storage_dtype": str(dtype).removeprefix("torch.")}
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def load_adapter(directory: Path | str) -> Adapter:
    from safetensors.torch import load_file

    directory = Path(directory)
    if not is_adapter_dir(directory):
        raise AdapterError(f"{directory} holds no {ADAPTER_FILE} and {ADAPTER_CONFIG}; it is not an adapter directory.")
    config = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    tensors = load_file(str(directory / ADAPTER_FILE))
    factors = {}
    for key in tensors:
        if key.endswith(".lora_A"):
            name = key.removesuffix(".lora_A")
            if f"{name}.lora_B" not in tensors:
                raise AdapterError(f"{directory / ADAPTER_FILE}: {name} has lora_A but no lora_B")
            factors[name] = (tensors[key], tensors[f"{name}.lora_B"])
    if not factors:
        raise AdapterError(f"{directory / ADAPTER_FILE} holds no LoRA factors")
    return Adapter(factors, float(config["scale"]), config)


@torch.no_grad()
def apply_adapter(model: torch.nn.Module, adapter: Adapter) -> torch.nn.Module:
    """Merge the adapter into `model`'s weights in place (W += scale * B @ A, in float32) and
    return it. Pass a private copy: whoever else holds this model sees the change."""
    modules = dict(model.named_modules())
    for name, (a, b) in adapter.factors.items():
        module = modules.get(name)
        weight = getattr(module, "weight", None)
        if weight is None:
            raise AdapterError(f"the model has no linear layer {name!r} for the adapter; is it the adapter's base model?")
        delta = adapter.scale * (b.to(torch.float32) @ a.to(torch.float32))
        if tuple(delta.shape) != tuple(weight.shape):
            raise AdapterError(f"adapter factors for {name} make {tuple(delta.shape)}, the weight is {tuple(weight.shape)}")
        weight.copy_((weight.to(torch.float32) + delta.to(weight.device)).to(weight.dtype))
    return model
