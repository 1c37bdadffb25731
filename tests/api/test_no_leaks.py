"""No stack trace, internal path or echoed wall of input in any error a client gets."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pypdf
import pytest
import yaml
from asgi_lifespan import LifespanManager

from inference_api.api.errors import error_body, scrub
from inference_api.app import create_app
from inference_api.documents.parsing import DocumentParser, ParsedDocument
from inference_api.documents.sandbox import ParseSandbox
from inference_api.errors import ErrorCode, ServiceError
from tests.conftest import ADMIN_KEY, assert_error, auth, make_settings

LEAKS = ("Traceback", 'File "', "site-packages", sys.prefix, str(Path(__file__).parents[2]))


def assert_no_leak(response: httpx.Response, *extra: str) -> None:
    for leak in (*LEAKS, *extra):
        assert leak not in response.text, f"{leak!r} in {response.text}"


def test_scrub_removes_paths_and_tracebacks() -> None:
    package_file = pypdf.__file__
    message = scrub(f'cannot open {package_file}: bad xref\nTraceback (most recent call last):\n  File "x.py"')
    assert package_file not in message and "Traceback" not in message and 'File "' not in message
    assert message.startswith("cannot open <path>: bad xref")
    # A client's own URL path in a 404 message is not an internal path.
    assert scrub("no route /no/such/route") == "no route /no/such/route"
    assert len(scrub("x" * 100_000)) <= 1000


def test_the_envelope_scrubs_messages_and_details() -> None:
    error = ServiceError(
        ErrorCode.DOCUMENT_PROCESSING_ERROR,
        f"parser failed in {sys.prefix}/lib/thing.py",
        details=[{"field": "file", "message": f"see {Path.home()}/secret.txt"}],
    )
    body = error_body(error, "r-1")["error"]
    assert sys.prefix not in body["message"] and str(Path.home()) not in str(body["details"])


@pytest.fixture
def broken_registry(tmp_path: Path, registry_file: Path) -> Path:
    """The test registry plus a model whose config.json is not JSON: loading it fails inside transformers."""
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{this is not json")
    registry = yaml.safe_load(registry_file.read_text())
    registry["models"].append({"name": "broken", "path": str(broken)})
    path = tmp_path / "with-broken.yaml"
    path.write_text(yaml.safe_dump(registry))
    return path


@pytest.fixture
async def broken_model_client(tmp_path: Path, broken_registry: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(tmp_path / "data", broken_registry), warm_up=False)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60) as http,
    ):
        yield http


async def test_a_model_load_failure_names_no_path(broken_model_client: httpx.AsyncClient, tmp_path: Path) -> None:
    response = await broken_model_client.post("/models/broken/load", headers=auth(ADMIN_KEY))
    error = assert_error(response, 503, "MODEL_LOAD_FAILED")
    assert "broken" in str(error["message"])
    assert_no_leak(response, str(tmp_path))


async def test_a_document_parsing_error_leaks_no_trace_or_path(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A parser whose own words carry its file's path: the reason reaches the client, the path does not.
    def failing_reader(*args: object, **kwargs: object) -> None:
        raise pypdf.errors.PdfReadError(f"invalid xref table at {pypdf.__file__}:123")

    async def parse_here(self: ParseSandbox, filename: str, data: bytes) -> ParsedDocument:
        # The patch above reaches this process only: the parse runs here instead of in the sandbox's child.
        return DocumentParser().parse(filename, data)

    monkeypatch.setattr(pypdf, "PdfReader", failing_reader)
    monkeypatch.setattr(ParseSandbox, "parse", parse_here)
    response = await client.post(
        "/upload", files={"file": ("report.pdf", b"%PDF-1.4\n1 0 obj << >>\n", "application/pdf")}, headers=auth()
    )
    error = assert_error(response, 400, "DOCUMENT_PROCESSING_ERROR")
    assert "invalid xref table" in str(error["message"])
    assert_no_leak(response, pypdf.__file__, str(Path(pypdf.__file__).parent))


async def test_validation_errors_do_not_echo_input(client: httpx.AsyncClient) -> None:
    secret_value = "hunter2-" + "z" * 5000
    response = await client.post("/infer", json={"prompt": "hi", "top_k": secret_value}, headers=auth())
    assert_error(response, 422, "VALIDATION_ERROR")
    assert "hunter2" not in response.text
    # Unknown fields are named, but a huge name is cut short.
    response = await client.post("/infer", json={"prompt": "hi", "k" * 5000: 1}, headers=auth())
    assert_error(response, 422, "VALIDATION_ERROR")
    assert len(response.text) < 3000
