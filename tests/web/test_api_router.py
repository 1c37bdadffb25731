"""The page, its files and the docs as HTTP sees them: what is served, under which policy, and that nothing points
at another host (the browser tests in test_browser.py drive the same files in Chromium)."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from inference_api.api.security_headers import ASSET_CACHE, DOCS_CSP, PAGE_CSP, REDOC_CSP
from inference_api.app import create_app
from tests.conftest import ROOT, assert_error, make_settings

WEB = ROOT / "src" / "inference_api" / "web"
SHIPPED = sorted(p.relative_to(WEB).as_posix() for p in [*WEB.glob("static/*"), *WEB.glob("templates/*")])
ASSET = re.compile(r'(?:src|href)="(/web/[0-9a-f]{16}/[\w.-]+)"')


@pytest.fixture
async def http(tmp_path: Path, registry_file: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(tmp_path / "data", registry_file), warm_up=False)
    transport = httpx.ASGITransport(app=app)
    async with LifespanManager(app), httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_the_page_loads_without_a_key_under_the_page_csp(http: httpx.AsyncClient) -> None:
    response = await http.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == PAGE_CSP
    assert response.headers["cache-control"] == "no-cache"  # the page names the current files: always asked again
    assert "'unsafe-inline'" not in PAGE_CSP and "https:" not in PAGE_CSP


async def test_every_file_the_page_names_is_served_and_kept_for_good(http: httpx.AsyncClient) -> None:
    page = (await http.get("/")).text
    assets = set(ASSET.findall(page))
    assert {a.rsplit("/", 1)[1] for a in assets} == {"icon.svg", "app.css", "main.js"}
    # The modules main.js imports sit beside it, under the same digest.
    folder = next(iter(assets)).rsplit("/", 1)[0]
    main = (await http.get(f"{folder}/main.js")).text
    imports = re.findall(r'from "\./([\w.-]+)"', main)
    assert set(imports) == {"api.js", "markdown.js"}
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for path in [*assets, *(f"{folder}/{name}" for name in imports)]:
        response = await http.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith(types[Path(path).suffix])
        assert response.headers["cache-control"] == ASSET_CACHE


async def test_an_unknown_file_or_an_old_digest_is_a_404_that_is_not_kept(http: httpx.AsyncClient) -> None:
    page = (await http.get("/")).text
    folder = ASSET.findall(page)[0].rsplit("/", 1)[0]
    for path in (f"{folder}/nope.js", "/web/0000000000000000/main.js", f"{folder}/..%2Fapi_router.py"):
        response = await http.get(path)
        assert_error(response, 404, "NOT_FOUND")
        assert response.headers["cache-control"] == "no-store"


async def test_the_docs_are_served_from_local_files(http: httpx.AsyncClient) -> None:
    for path, csp, scripts in (
        ("/docs", DOCS_CSP, {"swagger-ui-bundle.js", "swagger-init.js"}),
        ("/redoc", REDOC_CSP, {"redoc.standalone.js"}),
    ):
        response = await http.get(path)
        assert response.status_code == 200
        assert response.headers["content-security-policy"] == csp
        sources = re.findall(r'<script src="([^"]+)"', response.text)
        assert {s.rsplit("/", 1)[1] for s in sources} == scripts
        assert "http" not in response.text  # no address on another host, in any attribute
        for source in sources:
            asset = await http.get(source)
            assert asset.status_code == 200 and asset.content, source
    assert "'unsafe-inline'" not in DOCS_CSP
    assert "script-src 'self';" in REDOC_CSP  # ReDoc's page admits inline styles, never inline scripts


async def test_the_web_routes_stay_out_of_the_openapi_document(http: httpx.AsyncClient) -> None:
    paths = (await http.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith(("/web", "/docs", "/redoc"))]


@pytest.mark.parametrize("name", SHIPPED)
def test_no_file_of_the_page_points_at_another_host_or_runs_inline_code(name: str) -> None:
    # SVG's namespace is a name, not an address anything loads.
    text = (WEB / name).read_text(encoding="utf-8").replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert not re.search(r"(?:https?:)?//[a-z0-9-]+\.[a-z]", text, re.IGNORECASE), name
    if name.endswith(".html"):
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), "an inline script: the CSP forbids it"
        assert not re.search(r"<style|\sstyle=", text), "an inline style: the page's CSP forbids it"
        assert not re.search(r"\son[a-z]+=", text), "an inline event handler: the CSP forbids it"


@pytest.mark.parametrize("name", [n for n in SHIPPED if n.endswith(".js")])
def test_scripts_never_turn_text_into_html(name: str) -> None:
    # Model output and server text reach the page through textContent only: none of these appear anywhere.
    text = (WEB / name).read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in text, f"{name} uses {sink}"


def test_a_built_wheel_ships_the_page(tmp_path: Path) -> None:
    """The files come from the package, so a non-editable install (the Docker image's) must carry them."""
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*build, "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("inference_api-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [n for n in SHIPPED if f"inference_api/web/{n}" not in names]
    assert not missing
