"""Secrets kept out of logs and /status: URL credentials, API keys, the JWT secret, bearer tokens."""

from __future__ import annotations

import contextlib
import logging
import re
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from inference_api.settings import MIN_KEY_LENGTH, Settings

MASK = "***"

# user:password@ (or token@) in any URL-like text: scheme://[user[:password]@]host
_URL_CREDENTIALS = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^\s/@'\"]+)@")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s'\",;]+")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_ASSIGNED = re.compile(
    r"(?i)\b((?:api[_-]?key|x-api-key|password|passwd|secret|token|jwt_secret)[\"']?\s*[:=]\s*[\"']?)[^\s'\",&;]+"
)
# Words long enough to be an API key, checked against the configured keys' digests.
_CANDIDATE = re.compile(r"[^\s'\"`,;:=&?/<>()\[\]{}]{" + str(MIN_KEY_LENGTH) + ",}")


def redact_url(url: str | None) -> str | None:
    """The URL with its password (or a lone user token, which Redis reads as a password) shown as ***."""
    if not url:
        return url
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"
    query = urllib.parse.urlencode(
        [
            (k, MASK if k.lower() in ("password", "passwd", "token", "secret") else v)
            for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class Redactor:
    """Masks secrets in text: configured values (URL passwords, the JWT secret), any word that is a configured API
    key (checked by digest, so keys configured only as SHA-256 are caught too), and secret-shaped text."""

    def __init__(self, secrets: set[str], is_key: Callable[[str], bool] | None = None) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True)
        self._is_key = is_key

    @classmethod
    def for_settings(cls, settings: Settings, is_key: Callable[[str], bool] | None = None) -> Redactor:
        secrets = {k.key for k in settings.api_keys if k.key}
        if settings.jwt_secret is not None:
            secrets.add(settings.jwt_secret.get_secret_value())
        for url in (settings.redis_url, settings.chroma_url):
            if url:
                secrets |= _url_secrets(url)
        return cls(secrets, is_key)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        text = _URL_CREDENTIALS.sub(_mask_userinfo, text)
        text = _BEARER.sub(rf"\g<1>{MASK}", text)
        text = _JWT.sub(MASK, text)
        text = _ASSIGNED.sub(rf"\g<1>{MASK}", text)
        if self._is_key is not None:
            is_key = self._is_key
            text = _CANDIDATE.sub(lambda m: MASK if is_key(m.group(0)) else m.group(0), text)
        return text


def _url_secrets(url: str) -> set[str]:
    parts = urllib.parse.urlsplit(url)
    found = {p for p in (parts.password, parts.username if parts.password is None else None) if p}
    found |= {urllib.parse.unquote(p) for p in found}
    return found


def _mask_userinfo(match: re.Match[str]) -> str:
    user, colon, _ = match.group("userinfo").partition(":")
    return f"{match.group('head')}{user}:{MASK}@" if colon else f"{match.group('head')}{MASK}@"


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and its traceback text) through a Redactor before any handler writes it."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: the handler reports it as it would without us
            return True
        record.msg = self.redactor(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            # Exception messages carry secrets too (a URL in a connection error): format once, redacted.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor(record.stack_info)
        return True


@contextlib.contextmanager
def redacted_logs(log_filter: RedactingFilter) -> Iterator[RedactingFilter]:
    """Attach the filter to the root logger's handlers (every propagated record passes them) while the app runs."""
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(log_filter)
    try:
        yield log_filter
    finally:
        for handler in handlers:
            handler.removeFilter(log_filter)


Lifespan = Callable[[Any], AbstractAsyncContextManager[None]]


def log_redaction(settings: Settings, lifespan: Lifespan) -> Lifespan:
    """The app's lifespan, with its logs redacted from start-up to shutdown (API keys once the key store exists)."""

    @asynccontextmanager
    async def redacting(app: Any) -> AsyncIterator[None]:
        def is_key(word: str) -> bool:
            services = getattr(app.state, "services", None)
            return services is not None and services.keys.authenticate(word) is not None

        with redacted_logs(RedactingFilter(Redactor.for_settings(settings, is_key))):
            async with lifespan(app):
                yield

    return redacting
