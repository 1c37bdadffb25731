"""Loading base models and tokenizers onto a device, and adapters onto a loaded base."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from inference_api.errors import ErrorCode, ServiceError
from inference_api.modeling import builtin
from inference_api.modeling.attention import keep_sdpa_off_cudnn, use_decode_attention
from inference_api.modeling.conversion import convert_gguf, is_prepared
from inference_api.modeling.decode_step import LlamaDecodeStep, decode_step_for
from inference_api.modeling.prefix import PrefixStore
from inference_api.modeling.quantization import int8_supported, quantize_linears
from inference_api.modeling.registry import BaseModelSpec

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(setting: str) -> torch.device:
    """`auto` takes the first CUDA device when one is present and the CPU otherwise."""
    if setting == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"DEVICE={setting} but no CUDA device is available")
    return device


def worker_devices(setting: str) -> list[torch.device]:
    """One worker per device: every CUDA device for `auto`/`cuda` when there are any, else the CPU."""
    if setting in ("auto", "cuda") and torch.cuda.is_available():
        return [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())]
    return [resolve_device(setting)]


@dataclass(frozen=True)
class Precision:
    """How a model's weights are held: a torch dtype, or `int8` linear layers over float32 activations."""

    name: str

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32 if self.name == "int8" else _DTYPES[self.name]

    @property
    def int8(self) -> bool:
        return self.name == "int8"


def resolve_precision(setting: str, device: torch.device) -> Precision:
    """`auto`: bfloat16 (or float16) on CUDA; int8 linear layers on a CPU that has fbgemm, else float32."""
    if setting == "auto":
        if device.type == "cuda":
            return Precision("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
        return Precision("int8" if int8_supported() else "float32")
    if setting == "int8" and (device.type != "cpu" or not int8_supported()):
        raise ValueError(f"DTYPE=int8 needs a CPU with fbgemm; use bfloat16 or float16 on {device}")
    return Precision(setting)


def weights_location(spec: BaseModelSpec, data_dir: Path) -> str:
    """A folder (or hub id) that `from_pretrained` can read, converting GGUF files once."""
    kind, location = spec.source.kind, spec.source.location
    if kind == "builtin":
        return str(builtin.prepare_builtin(data_dir))
    if kind == "gguf":
        gguf_path = Path(location)
        if not gguf_path.is_file():
            raise ServiceError(ErrorCode.MODEL_NOT_FOUND, f"model {spec.name!r}: GGUF file is missing")
        folder = data_dir / "models" / spec.name
        if not is_prepared(folder):
            logger.info("converting %s into %s (once)", gguf_path.name, folder)
            convert_gguf(gguf_path, folder)
        return str(folder)
    if kind == "upstream" and not Path(location).is_dir():
        raise ServiceError(ErrorCode.MODEL_NOT_FOUND, f"model {spec.name!r}: its tokenizer folder is missing")
    if kind == "path" and not Path(location).is_dir():
        raise ServiceError(ErrorCode.MODEL_NOT_FOUND, f"model {spec.name!r}: its folder is missing")
    return location


@dataclass
class LoadedBase:
    """A base model on a device with its tokenizer; adapters of this base share these weights."""

    name: str
    model: Any
    tokenizer: Any
    device: torch.device
    precision: Precision
    context_length: int
    load_seconds: float
    memory_bytes: int
    adapters: set[str] = field(default_factory=set)
    active_adapter: str | None = None
    prefixes: PrefixStore = field(default_factory=PrefixStore, repr=False)
    # The lean decode step (see decode_step.py) where it reproduces this model; rebuilt when adapters change.
    decode_step: LlamaDecodeStep | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.decode_step = decode_step_for(self.model, self.device)

    def activate(self, adapter: str | None) -> None:
        """Make `adapter` (or none: the base weights alone) the one the next forward pass uses."""
        if adapter == self.active_adapter:
            return
        if adapter is None:
            self.model.disable_adapters()
        else:
            if self.active_adapter is None:
                self.model.enable_adapters()
            self.model.set_adapter(adapter)
        self.active_adapter = adapter

    def add_adapter(self, name: str, path: Path) -> None:
        if not (path / "adapter_config.json").is_file():
            raise ServiceError(ErrorCode.MODEL_NOT_FOUND, f"adapter {name!r} of {self.name!r}: no adapter_config.json")
        self.model.load_adapter(str(path), adapter_name=name)
        self.adapters.add(name)
        self.decode_step = decode_step_for(self.model, self.device)
        self.prefixes.forget(name)
        # load_adapter leaves the new adapter active; restore what was active before.
        previous, self.active_adapter = self.active_adapter, name
        self.activate(previous)

    def remove_adapter(self, name: str) -> None:
        if name not in self.adapters:
            return
        if self.active_adapter == name:
            self.activate(None)
        self.model.delete_adapter(name)
        self.adapters.discard(name)
        self.decode_step = decode_step_for(self.model, self.device)
        self.prefixes.forget(name)


def load_tokenizer(location: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def context_length_of(config: Any) -> int:
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def load_base(spec: BaseModelSpec, data_dir: Path, device: torch.device, precision: Precision) -> LoadedBase:
    """Load a base model for inference: on `device`, in eval mode, with no gradients anywhere."""
    from transformers import AutoModelForCausalLM

    location = weights_location(spec, data_dir)
    started = time.perf_counter()
    model: Any = AutoModelForCausalLM.from_pretrained(location, dtype=precision.dtype)
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    memory = quantize_linears(model) if precision.int8 else 0
    if device.type == "cpu" and getattr(model.config, "_attn_implementation", None) == "sdpa":
        use_decode_attention(model)
    if device.type == "cuda":
        keep_sdpa_off_cudnn()
    tokenizer = load_tokenizer(location)
    seconds = time.perf_counter() - started
    memory += sum(p.numel() * p.element_size() for p in model.parameters())
    memory += sum(b.numel() * b.element_size() for b in model.buffers())
    logger.info("loaded %s on %s (%s) in %.1fs", spec.name, device, precision.name, seconds)
    return LoadedBase(
        name=spec.name,
        model=model,
        tokenizer=tokenizer,
        device=device,
        precision=precision,
        context_length=context_length_of(model.config),
        load_seconds=seconds,
        memory_bytes=memory,
    )
