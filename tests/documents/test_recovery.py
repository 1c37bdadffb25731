"""A starting server removes the chunks an interrupted upload left behind (issue 19)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from inference_api.documents.store import ChromaStore
from tests.conftest import ADMIN_KEY, auth, make_settings, serving


def _write_orphans(data_dir: Path, count: int) -> None:
    store = ChromaStore.open(data_dir=data_dir / "chroma")
    try:
        store._chunks.upsert(
            ids=[f"{'e' * 32}-{i}" for i in range(count)],
            embeddings=[[1.0] + [0.0] * 383] * count,
            documents=["left by a crash"] * count,
            metadatas=[
                {
                    "document_id": "e" * 32,
                    "owner": "user",
                    "filename": "crashed.txt",
                    "uploaded_at": time.time() - 1,
                    "chunk_index": i,
                    "char_start": 0,
                    "char_end": 1,
                }
                for i in range(count)
            ],
        )
        assert store.chunk_count() == count
    finally:
        store.close()


async def test_orphans_of_a_crashed_upload_are_removed_at_start(tmp_path: Path, registry_file: Path) -> None:
    data_dir = tmp_path / "data"
    _write_orphans(data_dir, 30)
    async with serving(make_settings(data_dir, registry_file)) as http:
        deadline = time.monotonic() + 30
        while True:
            jobs = (await http.get("/status", headers=auth(ADMIN_KEY))).json()["maintenance"]
            sweep = next(job for job in jobs if job["name"] == "vector-orphans-at-start")
            if sweep["runs"]:
                break
            assert time.monotonic() < deadline, jobs
            await asyncio.sleep(0.1)
        assert sweep["last_result"]["orphans_removed"] == 30
    store = ChromaStore.open(data_dir=data_dir / "chroma")
    try:
        assert store.chunk_count() == 0
    finally:
        store.close()
