"""Where the web feature answers; the composition root hands them to the browser policy (api/security_headers.py)."""

from __future__ import annotations

PAGE_PATH = "/"
DOCS_PATHS = ("/docs", "/redoc")
# Every file under these prefixes is addressed by a hash of its folder's contents, so it may be cached for good.
ASSET_PREFIX = "/web/"
DOCS_ASSET_PREFIX = "/docs-assets/"
ASSET_PREFIXES = (ASSET_PREFIX, DOCS_ASSET_PREFIX)
