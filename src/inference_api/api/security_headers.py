"""Browser-facing policy on every response: security headers, and CORS only for the origins in CORS_ORIGINS."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference_api.settings import Settings

# The API serves JSON and event streams only: nothing in a response may load, run or frame anything.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# The chat page at / (web/): its own script and style files and images, and calls to this origin; nothing inline,
# nothing from another host.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
# Swagger UI from the package's own copy, started by a script file (not FastAPI's inline script); it draws its
# icons as data: images.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
# ReDoc's bundle writes <style> elements as it loads, before any nonce could reach it, so its page admits inline
# styles (never inline scripts); images and fonts still come from this origin only, so a style cannot call out.
# It searches in a worker made from a blob.
REDOC_CSP = DOCS_CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'").replace(
    "form-action 'none'", "form-action 'none'; worker-src blob:"
)
# Files under the asset prefixes are addressed by a hash of their contents: a new file has a new address.
ASSET_CACHE = "public, max-age=31536000, immutable"
# Headers a browser script may read from a cross-origin response (the rate limiter sets the X-RateLimit ones).
EXPOSED_HEADERS = ("X-Request-ID", "Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")

_FIXED = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
_POLICY_HEADERS = {name for name, _ in _FIXED} | {b"content-security-policy", b"cache-control"}


@dataclass(frozen=True)
class BrowserPages:
    """Where the app serves pages for a browser (the composition root says, from the web feature's paths)."""

    page: str  # the chat page
    docs: str  # Swagger UI
    redoc: str
    asset_prefixes: tuple[str, ...]  # files addressed by a hash of their contents


def policy_of(path: str, pages: BrowserPages | None) -> tuple[str, str]:
    """The CSP and Cache-Control for a path: the web page, the docs, their files, or the API."""
    if pages is not None:
        if path == pages.page:
            return PAGE_CSP, "no-cache"
        if path == pages.docs:
            return DOCS_CSP, "no-cache"
        if path == pages.redoc:
            return REDOC_CSP, "no-cache"
        if path.startswith(pages.asset_prefixes):
            return PAGE_CSP, ASSET_CACHE
    return API_CSP, "no-store"


class SecurityHeadersMiddleware:
    """Adds the security headers to every response as it starts (streams pass through untouched).

    API responses are never cached (`no-store`); the web page and the docs get CSPs that let them load their own
    files and nothing else, and those files (found only under the address of their current contents) are kept.
    """

    def __init__(self, app: ASGIApp, *, pages: BrowserPages | None = None) -> None:
        self.app = app
        self.pages = pages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp, cache = policy_of(scope["path"], self.pages)
        added = [*_FIXED, (b"content-security-policy", csp.encode())]
        if scope.get("scheme") == "https":
            added.append((b"strict-transport-security", b"max-age=31536000; includeSubDomains"))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Only a file that was found may be kept for good; a 404 under an asset address may not.
                kept_for = cache if cache != ASSET_CACHE or message["status"] == 200 else "no-store"
                # The policy wins over what a route set (an event stream's "no-cache", say).
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _POLICY_HEADERS]
                message = {**message, "headers": [*kept, *added, (b"cache-control", kept_for.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install_browser_policy(app: FastAPI, settings: Settings, pages: BrowserPages | None = None) -> None:
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
    app.add_middleware(SecurityHeadersMiddleware, pages=pages)
