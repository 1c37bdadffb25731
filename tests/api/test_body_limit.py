"""Body caps: 413 PAYLOAD_TOO_LARGE from Content-Length up front, or from the bytes counted as they arrive."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from starlette.types import Message, Receive, Scope, Send

from inference_api.api.body_limit import BodyLimit, BodyLimitMiddleware
from inference_api.app import create_app
from tests.conftest import ADMIN_KEY, assert_error, auth, make_settings

CAP_KB = 16


@pytest.fixture
async def capped_client(tmp_path: Path, registry_file: Path) -> AsyncIterator[httpx.AsyncClient]:
    # No warm-up: the caps act before any route, so no model is needed.
    app = create_app(make_settings(tmp_path / "data", registry_file, max_body_kb=CAP_KB), warm_up=False)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
    ):
        yield http


def big_json(size: int) -> bytes:
    return json.dumps({"prompt": "x" * size}).encode()


async def test_declared_length_over_the_cap_is_refused(capped_client: httpx.AsyncClient) -> None:
    response = await capped_client.post(
        "/infer", content=big_json(CAP_KB * 1024), headers={"content-type": "application/json"}
    )
    # 413 rather than 401: the body is refused before authentication or anything else looks at the request.
    error = assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert "MAX_BODY_KB" in str(error["message"])
    assert response.headers["connection"] == "close"


async def test_chunked_body_over_the_cap_stops_being_read(capped_client: httpx.AsyncClient) -> None:
    offered = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal offered
        yield b'{"prompt": "'
        for _ in range(1000):  # 1000 x 4 KiB = 4 MiB offered, with no Content-Length
            offered += 1
            yield b"x" * 4096
        yield b'"}'

    response = await capped_client.post(
        "/infer", content=body(), headers={**auth(), "content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert offered <= CAP_KB // 4 + 1  # nothing read past the chunk that crossed the cap


async def test_body_under_the_cap_reaches_the_route(capped_client: httpx.AsyncClient) -> None:
    response = await capped_client.post("/models/tiny/load", content=b"{}" + b" " * 8000, headers=auth(ADMIN_KEY))
    assert response.status_code != 413, response.text


async def test_upload_keeps_its_own_larger_cap(capped_client: httpx.AsyncClient) -> None:
    # Over MAX_BODY_KB but far under MAX_UPLOAD_MB: the upload route answers (here: no 'file' field), not the cap.
    response = await capped_client.post("/upload", data={"note": "n" * (CAP_KB * 4096)}, headers=auth())
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert "file" in str(error["message"])


async def test_upload_over_its_cap_is_refused_with_the_upload_message(tmp_path: Path, registry_file: Path) -> None:
    settings = make_settings(tmp_path / "data", registry_file, max_upload_mb=0.25)
    app = create_app(settings, warm_up=False)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
    ):
        response = await http.post("/upload", files={"file": ("big.txt", b"a" * 400_000)}, headers=auth())
    error = assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert "MAX_UPLOAD_MB" in str(error["message"])


# --- the middleware alone: a body longer than its Content-Length claimed, and how much of it is read ----------


async def run_capped(declared: int | None, chunks: int, chunk_size: int, cap: int) -> tuple[list[Message], int]:
    pulled = 0

    async def receive() -> Message:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"y" * chunk_size, "more_body": pulled < chunks}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):  # an app that reads everything it is given
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [(b"content-length", str(declared).encode())] if declared is not None else []
    scope = {"type": "http", "path": "/x", "method": "POST", "headers": headers, "state": {"request_id": "r-1"}}
    middleware = BodyLimitMiddleware(app, default=BodyLimit(cap, "too big"))
    await middleware(scope, receive, send)
    return sent, pulled


async def test_body_longer_than_its_declared_length_is_counted() -> None:
    # Content-Length claims 10 bytes; 100 chunks of 1 KiB arrive. Counting stops it after the cap.
    sent, pulled = await run_capped(declared=10, chunks=100, chunk_size=1024, cap=8 * 1024)
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"]) == {
        "error": {"code": "PAYLOAD_TOO_LARGE", "message": "too big", "request_id": "r-1"}
    }
    assert pulled == 9  # the ninth KiB crossed the 8 KiB cap; nothing after it was asked for


async def test_declared_length_over_the_cap_reads_nothing() -> None:
    sent, pulled = await run_capped(declared=9000, chunks=9, chunk_size=1000, cap=8000)
    assert sent[0]["status"] == 413 and pulled == 0


async def test_body_at_the_cap_passes() -> None:
    sent, pulled = await run_capped(declared=None, chunks=8, chunk_size=1000, cap=8000)
    assert sent[0]["status"] == 200 and pulled == 8


# --- over a real socket -----------------------------------------------------------------------------------


@pytest.fixture
async def live_port(tmp_path: Path, registry_file: Path) -> AsyncIterator[int]:
    app = create_app(make_settings(tmp_path / "data", registry_file, max_body_kb=CAP_KB), warm_up=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(3000):  # up to a minute
            if server.started:
                break
            await asyncio.sleep(0.02)
        assert server.started, "uvicorn did not start"
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


CHUNKED_HEAD = (
    b"POST /infer HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
)
CHUNK = b"%x\r\n%s\r\n" % (4096, b"x" * 4096)


async def test_chunked_body_over_a_socket_gets_413_and_the_connection_closes(live_port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", live_port)
    # 6 x 4 KiB: past the 16 KiB cap, small enough that uvicorn has taken it all off the socket when it closes.
    writer.write(CHUNKED_HEAD + CHUNK * 6 + b"0\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 413"), head
    fields = dict(line.split(b": ", 1) for line in head.lower().split(b"\r\n")[1:] if b": " in line)
    assert fields[b"connection"] == b"close"
    body = json.loads(await reader.readexactly(int(fields[b"content-length"])))
    assert body["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert body["error"]["request_id"] == fields[b"x-request-id"].decode()
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed: no second request on this connection
    writer.close()


async def test_endless_chunked_body_is_not_read_to_the_end(live_port: int) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", live_port)
    writer.write(CHUNKED_HEAD)
    written = 0
    with contextlib.suppress(ConnectionError):  # the server closing under a writer shows as a reset
        for _ in range(4096):  # 16 MiB offered
            writer.write(CHUNK)
            await asyncio.wait_for(writer.drain(), 10)
            written += 1
    # The server read a little past its 16 KiB cap and hung up; at most the sockets' buffers took the rest.
    assert written < 4096
    writer.close()
