"""A size cap on every request body, enforced as the body arrives: nothing is buffered, nothing past the cap is read."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference_api.api.errors import error_body
from inference_api.errors import ErrorCode, ServiceError
from inference_api.settings import Settings


@dataclass(frozen=True)
class BodyLimit:
    """The most bytes a request body may have, and what the client is told when it has more."""

    max_bytes: int
    message: str


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a body passes its cap; an HTTPException so FastAPI's body parsing lets it through
    (it turns any other exception there into a 400) and the app's handler answers it with the envelope."""

    def __init__(self, limit: BodyLimit) -> None:
        super().__init__(413, limit.message)


class BodyLimitMiddleware:
    """Refuses bodies over their route's cap with 413 PAYLOAD_TOO_LARGE: up front when Content-Length says so, else
    as soon as the bytes counted pass it (a chunked body, or one longer than its Content-Length claimed).

    Sits inside RequestContextMiddleware, so the request id is already in the scope's state.
    """

    def __init__(self, app: ASGIApp, *, default: BodyLimit, by_path: Mapping[str, BodyLimit] | None = None) -> None:
        self.app = app
        self.default = default
        self.by_path = dict(by_path or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.by_path.get(scope["path"], self.default)
        declared = _content_length(scope)
        if declared is not None and declared > limit.max_bytes:
            await _refuse(scope, send, limit)
            return

        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:  # a handler that swallowed the first refusal gets no more of the body either
                raise BodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.max_bytes:
                    exceeded = True
                    raise BodyTooLarge(limit)
            return message

        async def send_closing(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if exceeded:  # the rest of the body is still on the wire: don't keep the connection for another request
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, counting_receive, send_closing)
        except BodyTooLarge:
            # Raised outside the app's exception handling (by a middleware reading the body, say).
            if started:
                raise
            await _refuse(scope, send, limit)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


async def _refuse(scope: Scope, send: Send, limit: BodyLimit) -> None:
    request_id = scope.get("state", {}).get("request_id")
    body = json.dumps(error_body(ServiceError(ErrorCode.PAYLOAD_TOO_LARGE, limit.message), request_id)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def json_body_limit(settings: Settings) -> BodyLimit:
    """The cap on every body but an upload's: MAX_BODY_KB."""
    return BodyLimit(
        settings.max_body_kb * 1024,
        f"the request body is larger than the {settings.max_body_kb} KiB limit (MAX_BODY_KB)",
    )
