"""The embedder: unit vectors in input order, and a query is not stuck behind a whole upload."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from inference_api.documents import Embedder
from tests.test_torch_threads import settled_count, thread_count


class FakeModel:
    """Stands in for a SentenceTransformer: each call takes a while and is recorded."""

    max_seq_length = 256

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.started = threading.Event()

    def get_embedding_dimension(self) -> int:
        return 4

    def encode(self, texts: list[str], **_: Any) -> np.ndarray[Any, Any]:
        self.calls.append(texts)
        self.started.set()
        time.sleep(0.02)
        return np.array([[len(t), 1.0, 0.0, 0.0] for t in texts], dtype=np.float32)


def test_real_model_vectors(embedder: Embedder) -> None:
    texts = ["a much longer sentence about the vault and its access code", "vault", "the Zanzibar vault code"]
    vectors = embedder.embed(texts)
    assert vectors.shape == (3, 384) and embedder.dimensions == 384
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    # In input order, whatever order the batches ran in.
    assert np.allclose(vectors[1], embedder.embed(["vault"])[0], atol=1e-2)
    assert embedder.embed([]).shape == (0, 384)
    assert embedder.max_tokens == 254


def test_batches_are_sorted_by_length_and_results_restored() -> None:
    model = FakeModel()
    embedder = Embedder(model, batch_size=2)  # type: ignore[arg-type]
    texts = ["ccc", "a", "bbbb", "dd", "e"]
    vectors = embedder.embed(texts)
    assert [round(float(row[0] / row[1])) for row in vectors] == [3, 1, 4, 2, 1]
    assert [len(t) for call in model.calls for t in call] == [1, 1, 2, 3, 4]


def test_a_query_waits_for_one_batch_not_the_whole_upload() -> None:
    model = FakeModel()
    embedder = Embedder(model, batch_size=1)
    upload = threading.Thread(target=embedder.embed, args=([f"chunk {i}" for i in range(30)],))
    upload.start()
    model.started.wait()
    embedder.embed(["the query"])
    upload.join()
    position = next(i for i, call in enumerate(model.calls) if call == ["the query"])
    assert position <= 2, position


async def test_embedding_off_the_event_loop_leaves_no_thread_behind(embedder: Embedder) -> None:
    # A thread kept alive would keep its OpenMP team, and one team too many slows every decode step.
    before = thread_count()
    vectors = await embedder.embed_async(["the vault code", "a second text"])
    assert vectors.shape == (2, 384)
    assert await settled_count(before) == before
