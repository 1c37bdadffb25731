"""Browser-facing policy on every response: security headers, and CORS only for the origins in CORS_ORIGINS."""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference_api.settings import Settings

# The API serves JSON and event streams only: nothing in a response may load, run or frame anything.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# FastAPI's Swagger UI and ReDoc pages load their scripts and styles from jsDelivr and start them inline.
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
    "connect-src 'self'; worker-src blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
# Headers a browser script may read from a cross-origin response (the rate limiter sets the X-RateLimit ones).
EXPOSED_HEADERS = ("X-Request-ID", "Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")

_FIXED = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
_POLICY_HEADERS = {name for name, _ in _FIXED} | {b"content-security-policy", b"cache-control"}


class SecurityHeadersMiddleware:
    """Adds the security headers to every response as it starts (streams pass through untouched).

    API responses are never cached (`no-store`); the documentation pages get a CSP that lets them load.
    """

    def __init__(self, app: ASGIApp, *, docs_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.docs_paths = frozenset(docs_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        docs = scope["path"] in self.docs_paths
        added = [
            *_FIXED,
            (b"content-security-policy", (DOCS_CSP if docs else API_CSP).encode()),
            (b"cache-control", b"no-cache" if docs else b"no-store"),
        ]
        if scope.get("scheme") == "https":
            added.append((b"strict-transport-security", b"max-age=31536000; includeSubDomains"))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                # The policy wins over what a route set (an event stream's "no-cache", say).
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _POLICY_HEADERS]
                message = {**message, "headers": kept + added}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def docs_paths(app: FastAPI) -> list[str]:
    paths = [p for p in (app.docs_url, app.redoc_url) if p]
    if app.docs_url and app.swagger_ui_oauth2_redirect_url:
        paths.append(app.swagger_ui_oauth2_redirect_url)
    return paths


def install_browser_policy(app: FastAPI, settings: Settings) -> None:
    """CORS (only with CORS_ORIGINS set), then the security headers outermost, so every response has them."""
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=[settings.api_key_header, "Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=list(EXPOSED_HEADERS),
            # Credentials are headers the caller's script sets, never cookies.
            allow_credentials=False,
            max_age=600,
        )
    app.add_middleware(SecurityHeadersMiddleware, docs_paths=docs_paths(app))
