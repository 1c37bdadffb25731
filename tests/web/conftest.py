"""A real server (uvicorn on a socket, the real default model) and Debian's headless Chromium driven by Playwright.

Every page a test opens fails any request to a host other than the server's and records console errors; a test
ends by checking that neither happened (see BrowserPage.assert_clean).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, Route, sync_playwright

from tests.conftest import DOCS_KEY, USER_KEY

# Debian's chromium: Playwright's own browser download is not reachable from these machines.
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # tests run as root in CI, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Chromium's own calls home (updates, sync, field trials) would be requests to other hosts.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class WebServer:
    url: str

    def api(self, key: str = USER_KEY) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": key}, timeout=60)

    def cancelled(self) -> int:
        """Generations the server's workers dropped because their client went away."""
        with self.api() as http:
            workers = http.get("/status").json()["workers"]
        return sum(int(w["cancelled"]) for w in workers)


@pytest.fixture(scope="session")
def web_server(
    tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path, tiny_model_dir: Path
) -> Iterator[WebServer]:
    folder = tmp_path_factory.mktemp("web-server")
    data = folder / "data"
    # The default model already converted for the whole test run, seen where the service looks for it.
    (data / "models").mkdir(parents=True)
    (data / "models" / default_model_dir.name).symlink_to(default_model_dir, target_is_directory=True)
    registry = folder / "models.yaml"
    registry.write_text(yaml.safe_dump({"models": [{"name": "tiny", "path": str(tiny_model_dir)}]}))
    keys = [
        {"name": "web-user", "key": USER_KEY, "scopes": ["infer", "chat", "documents"]},
        {"name": "docs-only", "key": DOCS_KEY, "scopes": ["documents"]},
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "DEFAULT_", "MODEL_", "REDIS_", "CHROMA_"))}
    env.update(
        DATA_DIR=str(data),
        MODEL_REGISTRY=str(registry),
        API_KEYS=json.dumps(keys),
        DEVICE="cpu",
        MAX_NEW_TOKENS="512",
        RATE_LIMIT="100000/minute",
        RATE_LIMIT_GENERATION="100000/minute",
        HF_HUB_OFFLINE="1",
        DO_NOT_TRACK="1",
        ANONYMIZED_TELEMETRY="False",
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = folder / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "inference_api", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 180
            while True:
                if process.poll() is not None:
                    raise AssertionError(f"the server exited early:\n{log.read_text()[-3000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                        break
                assert time.monotonic() < deadline, f"the server never became ready:\n{log.read_text()[-3000:]}"
                time.sleep(0.2)
            yield WebServer(url)
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


# Module scope: Playwright's sync driver holds an event loop on this thread while it runs, which would break every
# asyncio test collected after the browser tests.
@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright_driver: Playwright) -> Iterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        # Fail, never skip: a missing browser must not pass as a green page (make install installs it).
        pytest.fail(f"{CHROMIUM} is missing; install Debian's chromium (apt-get install chromium) or set CHROMIUM_PATH")
    browser = playwright_driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
    yield browser
    browser.close()


@dataclass
class BrowserPage:
    """A page on the server, with what went wrong in it recorded instead of passing unnoticed."""

    page: Page
    server: WebServer
    foreign_requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def assert_clean(self, *, expected_console: tuple[str, ...] = ()) -> None:
        """No request left for another host, no uncaught error, and no console error but the expected ones."""
        assert not self.foreign_requests, self.foreign_requests
        assert not self.page_errors, self.page_errors
        unexpected = [e for e in self.console_errors if not any(x in e for x in expected_console)]
        assert not unexpected, unexpected

    def sign_in(self, key: str = USER_KEY) -> None:
        self.page.goto(self.server.url + "/")
        self.page.fill("#key-input", key)
        self.page.press("#key-input", "Enter")
        self.page.wait_for_selector("#app-view:not([hidden])")
        self.page.wait_for_selector("#model-select option", state="attached")


@pytest.fixture
def open_page(browser: Browser, web_server: WebServer) -> Iterator[BrowserPage]:
    context = browser.new_context(viewport={"width": 1280, "height": 820}, color_scheme="light")
    server_host = urlsplit(web_server.url).netloc
    state = BrowserPage(context.new_page(), web_server)

    def guard(route: Route) -> None:
        if urlsplit(route.request.url).netloc == server_host:
            route.continue_()
        else:
            state.foreign_requests.append(route.request.url)
            route.abort("blockedbyclient")

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            state.console_errors.append(message.text)

    context.route("**/*", guard)
    state.page.on("console", on_console)
    state.page.on("pageerror", lambda error: state.page_errors.append(str(error)))
    # Confirmations (delete a chat, a document) are answered yes, as a person clicking OK would.
    state.page.on("dialog", lambda dialog: dialog.accept())
    state.page.set_default_timeout(60_000)
    yield state
    context.close()


def screenshot_path(tmp_path: Path, name: str) -> Path:
    """docs/screenshots/ when UPDATE_SCREENSHOTS=1 (make screenshots), else the test's own folder: a plain test
    run takes the same pictures without touching the tracked files."""
    folder = SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name
