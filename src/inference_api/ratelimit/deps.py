"""The app-wide dependency that counts each request against its caller's limits, and the headers it earns."""

from __future__ import annotations

import math
from typing import Annotated, Protocol, cast

from fastapi import Depends, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference_api.api.state import app_state
from inference_api.auth.deps import IdentityDep
from inference_api.errors import ErrorCode, ServiceError
from inference_api.ratelimit.service import GENERATION_ROUTES, LimitState, RateLimiter

_STATE_KEY = "rate_limit"


class RateLimitState(Protocol):
    rate_limits: RateLimiter


def get_rate_limiter(request: Request) -> RateLimiter:
    return cast(RateLimitState, app_state(request)).rate_limits


RateLimiterDep = Annotated[RateLimiter, Depends(get_rate_limiter)]


def caller_of(request: Request, key_name: str | None) -> str:
    """The rate-limit identity: the key's name, or (no valid credential) the client's address."""
    if key_name is not None:
        return f"key:{key_name}"
    return f"addr:{request.client.host if request.client else 'unknown'}"


async def enforce_rate_limit(request: Request, identity: IdentityDep, limiter: RateLimiterDep) -> None:
    """Runs before every route (FastAPI app dependency), so routes added later are limited too."""
    route = request.scope.get("route")
    path: str = getattr(route, "path", request.url.path)
    if path in limiter.exempt:
        return
    key_name = identity.principal.name if identity.principal is not None else None
    caller = caller_of(request, key_name)
    decision = await limiter.hit(caller, key_name, generation=path in GENERATION_ROUTES)
    if decision.binding is not None:
        request.state.rate_limit = decision.binding
    if not decision.allowed:
        assert decision.binding is not None
        state = decision.binding
        who = f"key {key_name!r}" if key_name is not None else f"client {caller.removeprefix('addr:')}"
        where = " on generation routes" if state.bucket == "generation" else ""
        raise ServiceError(
            ErrorCode.RATE_LIMITED,
            f"rate limit exceeded: {state.limit}{where} for {who}; retry in {state.reset_in()} s",
            retry_after=state.reset_in(),
        )


def rate_limit_headers(state: LimitState) -> list[tuple[bytes, bytes]]:
    return [
        (b"x-ratelimit-limit", str(state.limit.amount).encode()),
        (b"x-ratelimit-remaining", str(state.remaining).encode()),
        (b"x-ratelimit-reset", str(math.ceil(state.reset_at)).encode()),
    ]


class RateLimitHeadersMiddleware:
    """Adds X-RateLimit-Limit / -Remaining / -Reset (epoch seconds) to every limited response, errors included.

    Pure ASGI, so streamed responses get them too; the state comes from `enforce_rate_limit`.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})  # shared with request.state further in

        async def send_with_headers(message: Message) -> None:
            limit = state.get(_STATE_KEY)
            if message["type"] == "http.response.start" and isinstance(limit, LimitState):
                message = {**message, "headers": [*message.get("headers", []), *rate_limit_headers(limit)]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
