"""HTTP metrics and the access log line: a pure ASGI middleware, so streamed responses pass through unbuffered."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference_api.observability.context import RequestRecord, current_record
from inference_api.observability.metrics import Metrics

access_logger = logging.getLogger("inference_api.access")


class ObservabilityMiddleware:
    """Opens a request record, then counts and logs the request once its last byte has gone out.

    It sits outside the request-context middleware so that it also sees the 500 envelope that one
    writes; the route template is read from the scope, where routing left it.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics, skip_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.metrics = metrics
        self.skip_paths = skip_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.skip_paths:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        record = RequestRecord(scope=scope, on_error=self.metrics.error_response)
        token = current_record.set(record)
        received = 0
        sent = 0
        status = 500
        finished: float | None = None

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def measuring_send(message: Message) -> None:
            nonlocal sent, status, finished
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
                if not message.get("more_body", False):
                    finished = time.perf_counter()
            await send(message)

        try:
            await self.app(scope, counting_receive, measuring_send)
        finally:
            current_record.reset(token)
            seconds = (finished or time.perf_counter()) - started
            request_bytes = max(received, _declared_length(scope))
            self.metrics.http_request(record.route, status, record.model, record.version, seconds, request_bytes, sent)
            _log_access(scope, record, status, seconds)


def _declared_length(scope: Scope) -> int:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _log_access(scope: Scope, record: RequestRecord, status: int, seconds: float) -> None:
    state: dict[str, Any] = scope.get("state", {})
    principal = state.get("principal")
    fields: dict[str, Any] = {
        "request_id": state.get("request_id", "-"),
        "key": getattr(principal, "name", None),  # the key's name; the key itself is never logged
        "method": scope.get("method"),
        "route": record.route,
        "status": status,
        "model": record.model or None,
        "version": record.version or None,
        "prompt_tokens": record.prompt_tokens,
        "tokens_generated": record.tokens_generated,
        "queue_time": _rounded(record.queue_time),
        "generation_time": _rounded(record.generation_time),
        "total_time": round(seconds, 6),
        "error_code": record.error_code,
    }
    model = f" model={record.model}:{record.version}" if record.model else ""
    tokens = f" tokens={record.prompt_tokens}+{record.tokens_generated}" if record.model else ""
    error = f" error={record.error_code}" if record.error_code else ""
    access_logger.info(
        "%s %s %d key=%s%s%s%s %.3fs",
        fields["method"],
        record.route,
        status,
        fields["key"] or "-",
        model,
        tokens,
        error,
        seconds,
        extra={"access": fields, "request_id": fields["request_id"]},
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
