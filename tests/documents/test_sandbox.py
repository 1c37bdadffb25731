"""Uploads are parsed in a child process bounded in time and memory, and stopped when nobody waits (issue 19)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psutil
import pytest

from inference_api.documents.embedding import Embedder
from inference_api.documents.sandbox import ParseLimits, ParseSandbox
from inference_api.errors import ErrorCode, ServiceError
from tests.conftest import assert_error, auth, make_settings, serving
from tests.documents.samples import many_paragraphs_html, sample


@pytest.fixture(autouse=True)
def shared_embedder(monkeypatch: pytest.MonkeyPatch, embedder: Embedder) -> None:
    monkeypatch.setattr(Embedder, "load", classmethod(lambda cls, *args, **kwargs: embedder))


async def test_a_parse_gives_the_same_text_as_in_process() -> None:
    sandbox = ParseSandbox()
    name, data = sample("csv")
    parsed = await sandbox.parse(name, data)
    assert "topic: vault | note: The access code of the Zanzibar vault is 4471." in parsed.text
    assert sandbox.children == set()


async def test_a_slow_parse_is_refused_within_the_time_limit(tmp_path: Path, registry_file: Path) -> None:
    # Issue 19: a CSV line of 80,000 columns took 64 s in unstructured and stalled the server. CSV is read with
    # the csv module now (milliseconds); a page of 200,000 paragraphs still takes unstructured many seconds.
    # Stored before the response (not in the background), so that the refusal is the response.
    settings = make_settings(tmp_path / "data", registry_file, parse_timeout=2.0, ingest_background_mb=10.0)
    async with serving(settings) as http:
        started = time.monotonic()
        page = many_paragraphs_html(200_000)
        response = await http.post("/upload", files={"file": ("long.html", page)}, headers=auth())
        elapsed = time.monotonic() - started
        error = assert_error(response, 400, "DOCUMENT_PROCESSING_ERROR")
        assert "PARSE_TIMEOUT" in str(error["message"])
        assert elapsed < 10
        assert (await http.get("/documents", headers=auth())).json()["documents"] == []


async def test_a_parse_over_its_memory_limit_is_refused() -> None:
    sandbox = ParseSandbox(limits=ParseLimits(timeout=30, memory_bytes=32 * 1024 * 1024))
    with pytest.raises(ServiceError) as caught:
        await sandbox.parse("big.txt", ("The vault opens on weekdays only. " * 150_000).encode())
    assert caught.value.code is ErrorCode.DOCUMENT_PROCESSING_ERROR
    assert "PARSE_MEMORY_MB" in caught.value.message or "PARSE_TIMEOUT" in caught.value.message


async def test_a_cancelled_parse_kills_its_process() -> None:
    # A client that leaves cancels its request's task: the parse must stop with it, not run on for minutes.
    sandbox = ParseSandbox(limits=ParseLimits(timeout=60))
    task = asyncio.ensure_future(sandbox.parse("long.html", many_paragraphs_html(400_000)))
    deadline = time.monotonic() + 30
    while not sandbox.children:
        assert time.monotonic() < deadline, "the parse never started"
        await asyncio.sleep(0.05)
    (pid,) = sandbox.children
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_large_text_comes_back_under_uvloop() -> None:
    # The server runs on uvloop, which left the pipe non-blocking after watching it: a text larger than the
    # pipe's buffer failed with EAGAIN (a 500) in the reliability suite's kill -9 run.
    import uvloop

    text = "The vault opens on weekdays only.\n\n" * 10_000  # 350 kB, several times the pipe's buffer
    sandbox = ParseSandbox(limits=ParseLimits(timeout=120))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        parsed = runner.run(sandbox.parse("long.txt", text.encode()))
    assert len(parsed.text) > 300_000
