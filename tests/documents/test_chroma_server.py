"""The service against a real Chroma server (`chroma run`, from the chromadb package) over HTTP."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference_api.documents import ChromaStore, DocumentService, Embedder
from tests.documents.samples import QUERY, distractors, sample


def _chroma_command() -> str | None:
    beside = Path(sys.executable).with_name("chroma")
    return str(beside) if beside.exists() else shutil.which("chroma")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    command = _chroma_command()
    if command is None:
        pytest.skip("the chroma command (from the chromadb package) is not installed")
    port = _free_port()
    folder = tmp_path_factory.mktemp("chroma-server")
    env = dict(os.environ, ANONYMIZED_TELEMETRY="False")
    log = (folder / "server.log").open("wb")
    server = subprocess.Popen(
        [command, "run", "--path", str(folder / "db"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"chroma run did not start: {(folder / 'server.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


async def test_service_over_a_chroma_server(chroma_url: str, embedder: Embedder) -> None:
    store = ChromaStore.open(url=chroma_url, name="rag-test")
    service = DocumentService(store, embedder)
    try:
        store.heartbeat()
        for name, data in distractors():
            await service.ingest("alice", name, data)
        # One file, sent twice: a DOCX made again carries a new timestamp when the second has changed.
        docx = sample("docx")
        result = await service.ingest("alice", *docx)
        assert (await service.ingest("alice", *docx)).duplicate
        hits = await service.search("alice", QUERY, k=3)
        assert hits[0].document_id == result.document_id and "4471" in hits[0].text
        assert await service.search("bob", QUERY, k=3) == []
        assert (await service.check_integrity()).ok

        # A second client (another replica) sees the same documents.
        replica = DocumentService(ChromaStore.open(url=chroma_url, name="rag-test"), embedder)
        assert [d.document_id for d in await replica.list("alice")][-1] == result.document_id

        deleted = await replica.delete("alice", result.document_id)
        assert deleted.chunks_removed == result.chunks
        assert all(h.document_id != result.document_id for h in await service.search("alice", QUERY, k=5))
        assert await service.chunk_count() == sum(d.chunks for d in await service.list("alice"))
        replica.close()
    finally:
        service.close()


def test_bad_urls() -> None:
    for url in ("ftp://host:1", "localhost:8000", "http://"):
        with pytest.raises(ValueError):
            ChromaStore.open(url=url)
    with pytest.raises(ValueError):
        ChromaStore.open()
