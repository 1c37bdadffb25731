"""GET / (the chat page) and its files, and /docs and /redoc on Swagger UI and ReDoc files from a package.

Nothing here is a JSON API: the routes stay out of the OpenAPI document. The page is plain ES modules and CSS
served as they are in the repository (no build step); every call it makes goes to the JSON API with the key.
"""

from __future__ import annotations

import hashlib
import html
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

from inference_api.errors import ErrorCode, ServiceError
from inference_api.web.paths import ASSET_PREFIX, DOCS_ASSET_PREFIX, DOCS_PATHS, PAGE_PATH

_HERE = Path(__file__).parent
_MEDIA_TYPES = MappingProxyType(
    {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".png": "image/png"}
)


@dataclass(frozen=True)
class AssetFolder:
    """A folder's files addressed under a hash of their contents, so that a changed file gets a new address
    and browsers may keep every file for good (one page load is then one request, not one per module)."""

    prefix: str
    files: Mapping[str, Path]
    digest: str

    @classmethod
    def of(cls, prefix: str, folder: Path, names: frozenset[str] | None = None) -> AssetFolder:
        files = {
            path.name: path
            for path in sorted(folder.iterdir())
            if path.suffix in _MEDIA_TYPES and (names is None or path.name in names)
        }
        digest = hashlib.sha256()
        for name, path in files.items():
            digest.update(name.encode())
            digest.update(path.read_bytes())
        return cls(prefix, MappingProxyType(files), digest.hexdigest()[:16])

    @property
    def root(self) -> str:
        return f"{self.prefix}{self.digest}"

    def response(self, digest: str, name: str) -> FileResponse:
        path = self.files.get(name)
        # Another digest is a page from before an upgrade: its files are gone, not to be answered with new ones.
        if digest != self.digest or path is None:
            raise ServiceError(ErrorCode.NOT_FOUND, f"no file {name!r} here")
        return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix])


def _docs_static_folder() -> Path:
    """fastapi-offline's copies of Swagger UI and ReDoc (found without importing the package, which builds nothing
    we use)."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        raise RuntimeError("the fastapi-offline package is missing: it ships the files of /docs and /redoc")
    return Path(spec.origin).parent / "static"


def _template(name: str) -> str:
    return (_HERE / "templates" / name).read_text(encoding="utf-8")


def _fill(template: str, values: Mapping[str, str]) -> str:
    for key, value in values.items():
        template = template.replace("{{" + key + "}}", html.escape(value, quote=True))
    return template


# Built once at import: reading the package's own files, which do not change while the process runs.
_PAGE_ASSETS = AssetFolder.of(ASSET_PREFIX, _HERE / "static")
_DOCS_ASSETS = AssetFolder.of(
    DOCS_ASSET_PREFIX,
    _docs_static_folder(),
    frozenset({"swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"}),
)

router = APIRouter(tags=["web"], include_in_schema=False)


@router.get(PAGE_PATH, response_class=HTMLResponse)
async def chat_page() -> HTMLResponse:
    """The chat page; it needs no key to load (it asks for one), and every call it makes sends it."""
    return HTMLResponse(_fill(_template("index.html"), {"ASSETS": _PAGE_ASSETS.root}))


@router.get(ASSET_PREFIX + "{digest}/{name}")
async def page_asset(digest: str, name: str) -> FileResponse:
    return _PAGE_ASSETS.response(digest, name)


@router.get(DOCS_ASSET_PREFIX + "{digest}/{name}")
async def docs_asset(digest: str, name: str) -> FileResponse:
    return _DOCS_ASSETS.response(digest, name)


def _docs_page(request: Request, template: str, title: str) -> HTMLResponse:
    app = request.app
    root = request.scope.get("root_path", "")
    values = {
        "TITLE": f"{app.title} - {title}",
        "OPENAPI_URL": f"{root}{app.openapi_url}",
        "ASSETS": f"{root}{_PAGE_ASSETS.root}",
        "DOCS_ASSETS": f"{root}{_DOCS_ASSETS.root}",
    }
    return HTMLResponse(_fill(_template(template), values))


@router.get(DOCS_PATHS[0], response_class=HTMLResponse)
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI, started by a script file of ours rather than FastAPI's inline one (the CSP allows no inline)."""
    return _docs_page(request, "swagger.html", "Swagger UI")


@router.get(DOCS_PATHS[1], response_class=HTMLResponse)
async def redoc(request: Request) -> HTMLResponse:
    return _docs_page(request, "redoc.html", "ReDoc")
