"""The error envelopes, built here and only here: the product's `{"error": {"code", "message", "request_id"}}`,
and on the OpenAI-compatible routes (`/v1/...`) OpenAI's `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import functools
import logging
import os
import re
import site
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from inference_api.errors import HTTP_STATUS, ErrorCode, ServiceError
from inference_api.observability.context import note_error

logger = logging.getLogger(__name__)

_STATUS_CODES = {
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
}


def error_body(error: ServiceError, request_id: str | None) -> dict[str, Any]:
    """The envelope; every one built is counted here, for /stats/errors and error_responses_total."""
    note_error(error.code)
    body: dict[str, Any] = {"code": error.code.value, "message": scrub(error.message), "request_id": request_id}
    if error.details:
        body["details"] = [{k: scrub(v) for k, v in detail.items()} for detail in error.details]
    return {"error": body}


@functools.cache
def _internal_paths() -> re.Pattern[str]:
    """Where this process's files live: the interpreter, its packages, the source, home, temp and working dirs."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(__file__).resolve().parents[2])}
    roots |= {str(Path.home()), tempfile.gettempdir(), os.getcwd(), *site.getsitepackages()}
    roots = {r.rstrip("/") for r in roots if len(Path(r).parts) >= 2}
    alternation = "|".join(re.escape(r) for r in sorted(roots, key=len, reverse=True))
    return re.compile(rf"(?:{alternation})(?![\w.-])(?:/[^\s'\":,;)]*)?")


_TRACEBACK = re.compile(r"Traceback \(most recent call last\).*", re.DOTALL)
_MAX_MESSAGE = 1000


def scrub(message: str) -> str:
    """The last check on text bound for a client: no traceback, no path into this machine, no wall of text.

    Messages are written to be safe; this catches a library's words (a parser's reason, say) that were not.
    """
    message = _TRACEBACK.sub("(details in the server log)", message)
    message = _internal_paths().sub("<path>", message)
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."


# OpenAI's own codes where it has one; otherwise the product's code in lower case.
_OPENAI_CODES = {
    ErrorCode.UNAUTHORIZED: "invalid_api_key",
    ErrorCode.TOKEN_LIMIT_EXCEEDED: "context_length_exceeded",
    ErrorCode.MODEL_NOT_FOUND: "model_not_found",
    ErrorCode.RATE_LIMITED: "rate_limit_exceeded",
}
_OPENAI_PARAMS = {ErrorCode.MODEL_NOT_FOUND: "model"}


def uses_openai_shape(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def openai_status(error: ServiceError) -> int:
    # OpenAI answers a bad parameter with 400 (the SDK's BadRequestError), not 422.
    return 400 if error.code == ErrorCode.VALIDATION_ERROR else HTTP_STATUS[error.code]


def openai_error_body(error: ServiceError) -> dict[str, Any]:
    """OpenAI's shape of the envelope, counted like the native one."""
    note_error(error.code)
    status = openai_status(error)
    kind = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    param = error.details[0].get("field") if error.details else _OPENAI_PARAMS.get(error.code)
    code = _OPENAI_CODES.get(error.code, error.code.value.lower())
    return {"error": {"message": scrub(error.message), "type": kind, "param": param, "code": code}}


def error_content(error: ServiceError, request_id: str | None, path: str) -> tuple[int, dict[str, Any]]:
    """The status and body of an error answered on `path`: the envelope is chosen by the route prefix."""
    if uses_openai_shape(path):
        return openai_status(error), openai_error_body(error)
    return HTTP_STATUS[error.code], error_body(error, request_id)


def error_headers(error: ServiceError) -> dict[str, str]:
    return {"Retry-After": str(error.retry_after)} if error.retry_after is not None else {}


def error_response(error: ServiceError, request_id: str | None, path: str = "") -> JSONResponse:
    status, body = error_content(error, request_id, path)
    return JSONResponse(body, status_code=status, headers=error_headers(error))


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def validation_error(exc: RequestValidationError) -> ServiceError:
    """Name every offending field; FastAPI's raw report (with inputs echoed back) stays out."""
    details = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        if err.get("type") == "json_invalid":
            details.append({"field": "body", "message": "malformed JSON: " + str(err.get("msg", ""))})
            continue
        field = ".".join(loc) or "body"
        details.append({"field": field, "message": str(err.get("msg", "invalid value"))})
    message = "; ".join(f"{d['field']}: {d['message']}" for d in details) or "invalid request"
    return ServiceError(ErrorCode.VALIDATION_ERROR, message, details=details)


def _unparsable_body_reason(cause: BaseException | None) -> str:
    """Why a body could not be parsed at all, for the client: the decoder's own exception names the cause."""
    if isinstance(cause, RecursionError):
        # json.loads recurses once per level: a few thousand levels exhaust the interpreter's stack.
        return "nested too deeply (JSON bodies may nest arrays and objects at most a few hundred levels)"
    if isinstance(cause, UnicodeError):
        return "not valid UTF-8 text"
    return "the body could not be decoded"


def install_error_handlers(app: FastAPI) -> None:
    async def on_service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return error_response(exc, request_id_of(request), request.url.path)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc), request_id_of(request), request.url.path)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _STATUS_CODES.get(exc.status_code, ErrorCode.VALIDATION_ERROR)
        message = {
            ErrorCode.NOT_FOUND: f"no route {request.url.path}",
            ErrorCode.METHOD_NOT_ALLOWED: f"{request.method} is not allowed on {request.url.path}",
        }.get(code, str(exc.detail))
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's words for a body json.loads failed on without a JSONDecodeError; the cause says which.
            message = f"body: malformed JSON: {_unparsable_body_reason(exc.__cause__)}"
        response = error_response(ServiceError(code, message), request_id_of(request), request.url.path)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def on_unreachable_store(request: Request, exc: Exception) -> JSONResponse:
        # A store called without a guard of its own (chat/availability.py guards sessions): still a 503 that
        # says what is missing, never a 500.
        logger.warning("%s %s: a store could not be reached: %r", request.method, request.url.path, exc)
        error = ServiceError(
            ErrorCode.DEPENDENCY_UNAVAILABLE, "a store this route needs (Redis) cannot be reached", retry_after=5
        )
        return error_response(error, request_id_of(request), request.url.path)

    async def on_unreachable_vectors(request: Request, exc: Exception) -> JSONResponse:
        # The Chroma server's client speaks httpx: a refused or timed-out call is the server being away.
        logger.warning("%s %s: the Chroma server could not be reached: %r", request.method, request.url.path, exc)
        error = ServiceError(
            ErrorCode.DEPENDENCY_UNAVAILABLE,
            "the document store (Chroma server) cannot be reached; documents are unavailable for now, "
            "generation without use_documents still works",
            retry_after=5,
        )
        return error_response(error, request_id_of(request), request.url.path)

    app.add_exception_handler(httpx.TransportError, on_unreachable_vectors)
    app.add_exception_handler(RedisConnectionError, on_unreachable_store)
    app.add_exception_handler(RedisTimeoutError, on_unreachable_store)
    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
