"""The document routes and retrieval-augmented answers over the app, for every supported file type."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from inference_api.app import create_app
from inference_api.documents.embedding import Embedder
from inference_api.documents.grounding import NOT_IN_SOURCES
from inference_api.engine.service import Engine
from inference_api.engine.types import GenerationRequest
from inference_api.settings import Settings
from tests.conftest import ADMIN_KEY, USER_KEY, auth, make_settings, wait_ready
from tests.documents.samples import EXE, FACT, sample

TYPES = ["pdf", "txt", "docx", "html", "htm", "md", "csv", "eml", "pptx", "xlsx", "json", "epub"]
QUESTION = "What is the access code of the Zanzibar vault?"


@pytest.fixture(autouse=True)
def shared_embedder(monkeypatch: pytest.MonkeyPatch, embedder: Embedder) -> None:
    """Every app in this module reuses the session's embedding model instead of loading its own."""
    monkeypatch.setattr(Embedder, "load", classmethod(lambda cls, *args, **kwargs: embedder))


@pytest.fixture
def prompts_seen(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[GenerationRequest]]:
    seen: list[GenerationRequest] = []
    original = Engine.admit

    def admit(self: Engine, request: GenerationRequest) -> None:
        seen.append(request)
        original(self, request)

    monkeypatch.setattr(Engine, "admit", admit)
    yield seen


@asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with LifespanManager(app), httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120) as http:
        await wait_ready(http)
        yield http, app


async def upload(http: httpx.AsyncClient, name: str, data: bytes, key: str = USER_KEY) -> httpx.Response:
    return await http.post("/upload", files={"file": (name, data)}, headers=auth(key))


def decoded_prompt(app: Any, request: GenerationRequest) -> str:
    tokenizer = app.state.services.engine.workers[0].cache.peek(request.model).base.tokenizer
    return str(tokenizer.decode(request.prompt_ids))


@pytest.mark.parametrize("file_type", TYPES)
async def test_each_type_answers_with_its_source(
    tmp_path: Path, registry_file: Path, prompts_seen: list[GenerationRequest], file_type: str
) -> None:
    name, data = sample(file_type)
    async with app_client(make_settings(tmp_path / "data", registry_file)) as (http, app):
        uploaded = await upload(http, name, data)
        assert uploaded.status_code == 200, uploaded.text
        document_id = uploaded.json()["document_id"]
        assert uploaded.json()["chunks"] >= 1 and not uploaded.json()["duplicate"]
        body = {"prompt": QUESTION, "max_new_tokens": 4, "use_documents": True}
        answer = await http.post("/infer", json=body, headers=auth())
        assert answer.status_code == 200, answer.text
        sources = answer.json()["sources"]
        assert sources[0]["document_id"] == document_id and sources[0]["filename"] == name
        assert "4471" in sources[0]["excerpt"]
        assert "4471" in sources[0]["evidence"] and sources[0]["place"]  # the sentence, and where it is
        assert isinstance(answer.json()["grounded"], bool)
        prompt = decoded_prompt(app, prompts_seen[-1])
        assert "4471" in prompt  # the evidence was in what the model saw, right before the question
        assert prompt.index("4471") < prompt.index(QUESTION)


@pytest.mark.parametrize("policy", ["refuse", "flag"])
async def test_an_answer_that_draws_on_no_source_is_refused_or_flagged(
    tmp_path: Path, registry_file: Path, policy: str
) -> None:
    # The test model's weights are random: what it writes shares nothing with the sources.
    settings = make_settings(tmp_path / "data", registry_file, rag_ungrounded=policy)
    async with app_client(settings) as (http, _):
        await upload(http, *sample("txt"))
        body = {"prompt": QUESTION, "max_new_tokens": 8, "use_documents": True}
        answer = (await http.post("/infer", json=body, headers=auth())).json()
        streamed = await http.post("/infer", json={**body, "stream": True}, headers=auth())
    assert answer["sources"] and answer["grounded"] is False
    assert (answer["result"] == NOT_IN_SOURCES) is (policy == "refuse")
    final = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: ")][-1]
    assert final["grounded"] is False and final["result"] != NOT_IN_SOURCES  # a stream can only be flagged


async def test_chat_turn_with_documents_returns_sources(
    tmp_path: Path, registry_file: Path, prompts_seen: list[GenerationRequest]
) -> None:
    async with app_client(make_settings(tmp_path / "data", registry_file)) as (http, app):
        name, data = sample("md")
        document_id = (await upload(http, name, data)).json()["document_id"]
        session_id = (await http.post("/chat/start", json={}, headers=auth())).json()["sessionId"]
        body = {"message": QUESTION, "use_documents": True, "max_new_tokens": 4}
        reply = await http.post(f"/chat/{session_id}/messages", json=body, headers=auth())
        assert reply.status_code == 200, reply.text
        assert reply.json()["sources"][0]["document_id"] == document_id
        assert isinstance(reply.json()["grounded"], bool)
        assert "4471" in decoded_prompt(app, prompts_seen[-1])
        stored = (await http.get(f"/chat/{session_id}", headers=auth())).json()["messages"][-1]
        assert stored["sources"][0]["document_id"] == document_id


async def test_nothing_relevant_says_so_instead_of_answering(
    tmp_path: Path, registry_file: Path, prompts_seen: list[GenerationRequest]
) -> None:
    async with app_client(make_settings(tmp_path / "data", registry_file)) as (http, _):
        await upload(http, *sample("txt"))
        body = {"prompt": "How do penguins keep their eggs warm in winter?", "use_documents": True}
        answer = (await http.post("/infer", json=body, headers=auth())).json()
        streamed = await http.post("/infer", json={**body, "stream": True}, headers=auth())
    assert answer["sources"] == [] and "nothing" in answer["result"]
    assert answer["metadata"]["tokens_generated"] == 0
    assert not [r for r in prompts_seen if r.params.max_new_tokens != 2]  # only the warm-up ran
    events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert events[-1]["sources"] == [] and events[-1]["result"] == answer["result"]


async def test_a_large_upload_is_stored_in_the_background_with_progress(tmp_path: Path, registry_file: Path) -> None:
    # The line set low, so that the test's small files go the background way.
    settings = make_settings(tmp_path / "data", registry_file, ingest_background_mb=0.0001)
    async with app_client(settings) as (http, _):
        name, data = sample("pdf")
        uploaded = await upload(http, name, data)
        assert uploaded.status_code == 202, uploaded.text
        assert uploaded.json()["status"] == "processing" and uploaded.json()["chunks"] == 0
        document_id = uploaded.json()["document_id"]
        states = []
        for _ in range(1200):
            shown = await http.get(f"/documents/{document_id}", headers=auth())
            assert shown.status_code == 200, shown.text
            states.append((shown.json()["status"], shown.json()["progress"]))
            if states[-1][0] != "processing":
                break
            await asyncio.sleep(0.05)
        assert states[0][0] == "processing" and states[-1] == ("ready", 1.0)
        assert [p for _, p in states] == sorted(p for _, p in states)  # progress only goes forward
        assert shown.json()["chunks"] >= 1
        assert (await http.get(f"/documents/{document_id}", headers=auth(ADMIN_KEY))).status_code == 404
        found = await http.post("/documents/search", json={"query": "Zanzibar vault"}, headers=auth())
        assert found.json()["results"][0]["document_id"] == document_id

        # A file that passes the checks by content but cannot be parsed fails, with the reason.
        broken = await upload(http, "broken.pdf", b"%PDF-1.4\n" + b"not really a pdf " * 20)
        assert broken.status_code == 202
        broken_id = broken.json()["document_id"]
        for _ in range(1200):
            state = (await http.get(f"/documents/{broken_id}", headers=auth())).json()
            if state["status"] != "processing":
                break
            await asyncio.sleep(0.05)
        assert state["status"] == "failed" and "could not be read as PDF" in state["error"]
        listed = (await http.get("/documents", headers=auth())).json()["documents"]
        assert {(d["document_id"], d["status"]) for d in listed} == {(document_id, "ready"), (broken_id, "failed")}


async def test_list_get_search_delete_and_ownership(tmp_path: Path, registry_file: Path) -> None:
    async with app_client(make_settings(tmp_path / "data", registry_file)) as (http, _):
        name, data = sample("txt")
        document_id = (await upload(http, name, data)).json()["document_id"]
        again = await upload(http, "renamed.txt", data)
        assert again.json()["duplicate"] is True and again.json()["document_id"] == document_id
        listed = (await http.get("/documents", headers=auth())).json()["documents"]
        assert [d["document_id"] for d in listed] == [document_id]
        assert (await http.get(f"/documents/{document_id}", headers=auth())).json()["filename"] == name
        search = {"query": FACT, "k": 3}
        hits = (await http.post("/documents/search", json=search, headers=auth())).json()["results"]
        assert hits[0]["document_id"] == document_id and hits[0]["score"] > 0.5
        # Another key sees nothing of it.
        theirs = await http.post("/documents/search", json=search, headers=auth(ADMIN_KEY))
        assert theirs.json()["results"] == []
        assert (await http.get(f"/documents/{document_id}", headers=auth(ADMIN_KEY))).status_code == 404
        assert (await http.delete(f"/documents/{document_id}", headers=auth(ADMIN_KEY))).status_code == 404
        deleted = await http.delete(f"/documents/{document_id}", headers=auth())
        assert deleted.json()["chunks_removed"] >= 1
        after = (await http.post("/documents/search", json=search, headers=auth())).json()["results"]
        assert after == []
        assert (await http.get(f"/documents/{document_id}", headers=auth())).status_code == 404


async def test_documents_survive_a_restart(tmp_path: Path, registry_file: Path) -> None:
    settings = make_settings(tmp_path / "data", registry_file)
    async with app_client(settings) as (http, _):
        document_id = (await upload(http, *sample("pdf"))).json()["document_id"]
    async with app_client(settings) as (http, _):
        hits = await http.post("/documents/search", json={"query": FACT}, headers=auth())
    assert hits.json()["results"][0]["document_id"] == document_id


async def test_upload_over_the_cap_is_413_without_reading_the_rest(tmp_path: Path, registry_file: Path) -> None:
    settings = make_settings(tmp_path / "data", registry_file, max_upload_mb=0.25)
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'--B\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n\r\n'
        for _ in range(400):  # 400 x 64 KiB = 25 MiB offered, no Content-Length
            sent += 1
            yield b"a" * 65536
        yield b"\r\n--B--\r\n"

    headers = {**auth(), "content-type": "multipart/form-data; boundary=B"}
    async with app_client(settings) as (http, _):
        response = await http.post("/upload", content=body(), headers=headers)
        declared = await http.post(
            "/upload", files={"file": ("big.txt", b"a" * 400_000)}, headers=auth()
        )  # Content-Length says it all: refused before reading
    assert response.status_code == 413 and response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert sent < 20
    assert declared.status_code == 413


@pytest.mark.parametrize(
    ("name", "data", "status", "code"),
    [
        ("setup.pdf", EXE, 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("tool.exe", EXE, 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("empty.pdf", b"", 400, "DOCUMENT_PROCESSING_ERROR"),
        ("broken.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog", 400, "DOCUMENT_PROCESSING_ERROR"),
        ("broken.docx", b"PK\x03\x04 not really a zip", 400, "DOCUMENT_PROCESSING_ERROR"),
    ],
)
async def test_bad_files_get_clear_errors(
    tmp_path: Path, registry_file: Path, name: str, data: bytes, status: int, code: str
) -> None:
    async with app_client(make_settings(tmp_path / "data", registry_file)) as (http, _):
        response = await upload(http, name, data)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


@pytest.mark.parametrize("hostile", ["../../etc/passwd.txt", "evil\x00name.txt", "x" * 300 + ".txt"])
async def test_hostile_file_names_are_only_metadata(tmp_path: Path, registry_file: Path, hostile: str) -> None:
    data_dir = tmp_path / "data"
    _, content = sample("txt")
    async with app_client(make_settings(data_dir, registry_file)) as (http, _):
        response = await upload(http, hostile, content)
        assert response.status_code == 200, response.text
        stored = response.json()["filename"]
    assert "/" not in stored and "\x00" not in stored and len(stored) <= 255
    assert not await asyncio.to_thread(lambda: (tmp_path / "etc").exists() or any(tmp_path.rglob("passwd*")))


async def test_upload_needs_a_file_field_and_the_documents_scope(tmp_path: Path, registry_file: Path) -> None:
    settings = make_settings(tmp_path / "data", registry_file)
    async with app_client(settings) as (http, _):
        wrong_field = await http.post("/upload", files={"document": ("a.txt", b"hello")}, headers=auth())
        not_multipart = await http.post("/upload", json={"file": "x"}, headers=auth())
        no_key = await http.post("/upload", files={"file": ("a.txt", b"hello")})
    assert wrong_field.status_code == 422 and "file" in wrong_field.json()["error"]["message"]
    assert not_multipart.status_code == 422
    assert no_key.status_code == 401
