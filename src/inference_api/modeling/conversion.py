"""One-time conversion of a GGUF file into a safetensors folder that later loads in under a second."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

_COMPLETE_MARKER = ".prepared"


def is_prepared(folder: Path) -> bool:
    return (folder / _COMPLETE_MARKER).is_file()


def convert_gguf(gguf_path: Path, folder: Path) -> None:
    """De-quantize `gguf_path` to float32 and save model and tokenizer into `folder`."""
    # Heavy imports stay here so that `--help` and settings errors answer at once.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temp folder and rename, so an interrupted conversion never looks finished.
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        # A GGUF-loaded model refuses save_pretrained while it still claims to be quantized; the
        # weights are already de-quantized to float32 at this point, so the claim is stale.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        (staging / _COMPLETE_MARKER).write_text(f"converted from {gguf_path.name}\n")
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
