"""The document service end to end on the real embedding model and a local Chroma store."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import chromadb
import pytest
from chromadb.api import ClientAPI
from chromadb.config import Settings

from inference_api.documents import DocumentService, Embedder, read_limited
from inference_api.errors import ErrorCode, ServiceError
from tests.documents.samples import EXE, FACT, QUERY, distractors, make_docx, make_pdf, sample, text_pages

if TYPE_CHECKING:
    from tests.documents.conftest import DocumentServiceFactory

ALL_TYPES = ["pdf", "txt", "docx", "html", "htm", "md", "csv", "eml", "pptx", "xlsx", "json", "epub"]


@pytest.fixture
def raw_chroma(tmp_path: Path) -> Iterator[ClientAPI]:
    """Chroma itself, on the services' store, to damage it behind their back."""
    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"), settings=Settings(anonymized_telemetry=False))
    yield client
    client.close()


async def refused(call: Awaitable[object]) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        await call
    return caught.value


@pytest.mark.parametrize("file_type", ALL_TYPES)
async def test_each_type_is_found_by_search(service: DocumentService, file_type: str) -> None:
    for name, data in distractors():
        await service.ingest("alice", name, data)
    name, data = sample(file_type)
    result = await service.ingest("alice", name, data)
    assert result.filename == name and not result.duplicate
    assert result.chunks == len(result.document_ids) >= 1
    assert result.document_ids[0].startswith(result.document_id)

    hits = await service.search("alice", QUERY, k=4)
    assert hits[0].document_id == result.document_id
    assert "4471" in hits[0].text
    assert hits[0].score > hits[-1].score
    assert hits[0].chunk_id in result.document_ids
    assert {h.document_id for h in hits} > {result.document_id}  # the distractors rank below it


async def test_chunk_offsets_and_pages(service: DocumentService) -> None:
    pages = text_pages(3)
    pages[2].insert(20, FACT)
    result = await service.ingest("alice", "paged.pdf", make_pdf(pages))
    assert result.pages == 3 and result.chunks > 6
    [hit] = await service.search("alice", QUERY, k=1)
    assert FACT in hit.text and hit.page == 3
    assert hit.char_start < hit.char_end
    assert hit.char_end - hit.char_start == len(hit.text)


async def test_duplicate_upload_is_not_stored_twice(service: DocumentService) -> None:
    name, data = sample("txt")
    first = await service.ingest("alice", name, data)
    count = await service.chunk_count()
    again = await service.ingest("alice", "renamed.txt", data)
    assert again.duplicate and not first.duplicate
    assert again.document_id == first.document_id and again.document_ids == first.document_ids
    assert again.filename == name  # the stored document's name
    assert await service.chunk_count() == count
    assert len(await service.list("alice")) == 1


async def test_concurrent_duplicate_uploads(service: DocumentService) -> None:
    name, data = sample("md")
    results = await asyncio.gather(*(service.ingest("alice", name, data) for _ in range(3)))
    assert sorted(r.duplicate for r in results) == [False, True, True]
    assert len(await service.list("alice")) == 1


async def test_the_same_bytes_from_another_owner_are_separate(service: DocumentService) -> None:
    name, data = sample("txt")
    mine = await service.ingest("alice", name, data)
    theirs = await service.ingest("bob", name, data)
    assert not theirs.duplicate and theirs.document_id != mine.document_id
    await service.delete("bob", theirs.document_id)
    assert (await service.search("alice", QUERY, k=1))[0].document_id == mine.document_id


async def test_list_get_and_delete(service: DocumentService) -> None:
    name, data = sample("docx")
    result = await service.ingest("alice", name, data)
    other = await service.ingest("alice", "garden.txt", distractors()[0][1])
    listed = await service.list("alice")
    assert [d.document_id for d in listed] == [result.document_id, other.document_id]
    info = await service.get("alice", result.document_id)
    assert (info.filename, info.file_type, info.chunks, info.owner) == (name, "docx", result.chunks, "alice")
    assert info.size_bytes == len(data) and info.chunk_ids == result.document_ids and info.uploaded_at > 0

    before = await service.chunk_count()
    deleted = await service.delete("alice", result.document_id)
    assert deleted.chunks_removed == result.chunks
    assert await service.chunk_count() == before - result.chunks
    assert all(h.document_id != result.document_id for h in await service.search("alice", QUERY, k=10))
    assert [d.document_id for d in await service.list("alice")] == [other.document_id]
    for call in (service.get("alice", result.document_id), service.delete("alice", result.document_id)):
        assert (await refused(call)).code is ErrorCode.DOCUMENT_NOT_FOUND
    # Deleted means gone: the same bytes can be uploaded again.
    assert not (await service.ingest("alice", name, data)).duplicate


async def test_owners_see_only_their_own_documents(service: DocumentService) -> None:
    result = await service.ingest("alice", *sample("txt"))
    await service.ingest("bob", "garden.txt", distractors()[0][1])
    assert await service.list("carol") == []
    assert [d.owner for d in await service.list("bob")] == ["bob"]
    assert all(h.document_id != result.document_id for h in await service.search("bob", QUERY, k=10))
    assert await service.search("carol", QUERY, k=10) == []
    for call in (service.get("bob", result.document_id), service.delete("bob", result.document_id)):
        error = await refused(call)
        assert error.code is ErrorCode.DOCUMENT_NOT_FOUND and result.document_id in error.message
    assert (await service.get("alice", result.document_id)).document_id == result.document_id
    for bogus in ("nope", "../" * 40, "\x00", ""):
        assert (await refused(service.get("alice", bogus))).code is ErrorCode.DOCUMENT_NOT_FOUND


async def test_refusals(service: DocumentService) -> None:
    cases = [
        ("setup.pdf", EXE, ErrorCode.UNSUPPORTED_MEDIA_TYPE),
        ("setup.exe", EXE, ErrorCode.UNSUPPORTED_MEDIA_TYPE),
        ("empty.pdf", b"", ErrorCode.DOCUMENT_PROCESSING_ERROR),
        ("empty.docx", b"", ErrorCode.DOCUMENT_PROCESSING_ERROR),
        ("broken.pdf", make_pdf([["hello"]])[:200], ErrorCode.DOCUMENT_PROCESSING_ERROR),
        ("broken.docx", make_docx(["hello"])[:900], ErrorCode.DOCUMENT_PROCESSING_ERROR),
    ]
    for name, data, code in cases:
        error = await refused(service.ingest("alice", name, data))
        assert (error.code, error.status) == (code, 415 if code is ErrorCode.UNSUPPORTED_MEDIA_TYPE else 400), name
    assert await service.chunk_count() == 0


async def test_a_disguised_file_is_refused_even_after_its_bytes_were_stored(service: DocumentService) -> None:
    _, data = sample("txt")
    await service.ingest("alice", "notes.txt", data)
    error = await refused(service.ingest("alice", "notes.exe", data))
    assert error.code is ErrorCode.UNSUPPORTED_MEDIA_TYPE


async def test_hostile_file_names(service: DocumentService, tmp_path: Path) -> None:
    _, data = sample("txt")
    names = {
        "../../../../tmp/evil.txt": "evil.txt",
        "..\\..\\boot.ini.txt": "boot.ini.txt",
        "nul\x00byte.txt": "nulbyte.txt",
        "x" * 300 + ".txt": "x" * 251 + ".txt",
    }
    for i, (name, shown) in enumerate(names.items()):
        result = await service.ingest(f"owner{i}", name, data)
        assert result.filename == shown
        assert (await service.get(f"owner{i}", result.document_id)).filename == shown
        assert (await service.search(f"owner{i}", QUERY, k=1))[0].filename == shown
    # Nothing named after an upload appeared on disk.
    on_disk = await asyncio.to_thread(lambda: [p.name for p in tmp_path.rglob("*")])
    assert on_disk and not any("evil" in name or "boot" in name for name in on_disk)


async def test_upload_size_cap(make_service: DocumentServiceFactory) -> None:
    service = make_service(max_upload_bytes=1000)
    error = await refused(service.ingest("alice", "big.txt", b"a " * 600))
    assert (error.code, error.status) == (ErrorCode.PAYLOAD_TOO_LARGE, 413)


async def test_search_arguments_are_checked(service: DocumentService) -> None:
    for query, k in (("", 5), ("   ", 5), ("vault", 0), ("vault", 101), ("v" * 5000, 5)):
        assert (await refused(service.search("alice", query, k))).code is ErrorCode.VALIDATION_ERROR


class CountingStream:
    """An upload source that counts what was read from it."""

    def __init__(self, pieces: int, size: int) -> None:
        self.pieces, self.size, self.read_count = pieces, size, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.pieces):
            self.read_count += 1
            yield b"x" * self.size


class UploadLike:
    """What Starlette's UploadFile offers: `read(size)`."""

    def __init__(self, data: bytes) -> None:
        self.data, self.position, self.calls = data, 0, 0

    async def read(self, size: int = -1) -> bytes:
        self.calls += 1
        end = len(self.data) if size < 0 else self.position + size
        piece = self.data[self.position : end]
        self.position += len(piece)
        return piece


async def test_read_limited_stops_at_the_cap() -> None:
    stream = CountingStream(pieces=1000, size=1024)
    with pytest.raises(ServiceError) as caught:
        await read_limited(stream, 10 * 1024)
    assert caught.value.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert stream.read_count == 11  # the piece that crossed the cap, and not one more

    assert await read_limited(CountingStream(pieces=10, size=1024), 10 * 1024) == b"x" * 10 * 1024
    upload = UploadLike(b"y" * 5000)
    assert await read_limited(upload, 5000, read_size=1000) == b"y" * 5000
    big = UploadLike(b"z" * 1_000_000)
    with pytest.raises(ServiceError):
        await read_limited(big, 4096, read_size=1024)
    assert big.position <= 5 * 1024


async def test_documents_persist_across_services(make_service: DocumentServiceFactory, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = make_service(data_dir)
    result = await first.ingest("alice", *sample("pdf"))
    first.close()

    second = make_service(data_dir)
    assert [d.document_id for d in await second.list("alice")] == [result.document_id]
    assert (await second.search("alice", QUERY, k=1))[0].document_id == result.document_id
    assert (await second.ingest("alice", *sample("pdf"))).duplicate


async def test_duplicate_removal(service: DocumentService, raw_chroma: ClientAPI) -> None:
    name, data = sample("txt")
    kept = await service.ingest("alice", name, data)
    await service.ingest("alice", "garden.txt", distractors()[0][1])
    clean = await service.remove_duplicate_chunks()
    assert (clean.documents_removed, clean.chunks_removed, clean.documents_scanned) == (0, 0, 2)

    # A second copy of the same bytes under another id (as an older writer might have left), and a
    # stray second copy of one chunk.
    info = await service.get("alice", kept.document_id)
    copy = dataclasses.replace(info, document_id="f" * 32, uploaded_at=info.uploaded_at + 1)
    parsed = service.parser.parse(name, data)
    chunks = service.chunker.split(parsed.text)
    embeddings = service.embedder.embed([c.text for c in chunks])
    service.store.save_document(copy, chunks, [None] * len(chunks), embeddings)
    stored = raw_chroma.get_collection("documents_chunks", embedding_function=None)
    original = stored.get(ids=[kept.document_ids[0]], include=["embeddings", "metadatas", "documents"])
    stored.add(
        ids=["stray"],
        embeddings=original["embeddings"],
        metadatas=original["metadatas"],
        documents=original["documents"],
    )
    total = await service.chunk_count()

    report = await service.remove_duplicate_chunks()
    assert report.documents_removed == 1
    assert report.chunks_removed == len(chunks) + 1
    assert await service.chunk_count() == total - len(chunks) - 1
    assert (await service.list("alice"))[0].document_id == kept.document_id
    assert (await service.check_integrity()).ok


async def test_integrity_check(make_service: DocumentServiceFactory, raw_chroma: ClientAPI) -> None:
    service = make_service(orphan_grace_seconds=0.0)
    healthy = await service.check_integrity()
    assert healthy.ok and healthy.chunks_checked == 0

    result = await service.ingest("alice", *sample("pdf"))
    other = await service.ingest("alice", "garden.txt", distractors()[0][1])
    report = await service.check_integrity()
    assert report.ok and report.documents_checked == 2 and report.chunks_checked == result.chunks + other.chunks

    # Damage the store behind the service's back: a document record lost (its chunks are orphans),
    # and a chunk of another document lost (that document is incomplete).
    raw_chroma.get_collection("documents_documents", embedding_function=None).delete(ids=[result.document_id])
    raw_chroma.get_collection("documents_chunks", embedding_function=None).delete(ids=[other.document_ids[0]])
    report = await service.check_integrity()
    assert not report.ok
    assert (report.orphan_chunks, report.incomplete_documents, report.chunks_removed) == (result.chunks, 1, 0)
    assert other.document_id in report.examples
    # Orphans are invisible to search already.
    assert all(h.document_id != result.document_id for h in await service.search("alice", QUERY, k=10))

    repaired = await service.check_integrity(repair=True)
    assert repaired.chunks_removed == result.chunks
    after = await service.check_integrity()
    assert after.orphan_chunks == 0 and after.incomplete_documents == 1


async def test_recent_orphans_are_pending_not_removed(service: DocumentService, raw_chroma: ClientAPI) -> None:
    result = await service.ingest("alice", *sample("txt"))
    # As if an upload had written its chunks a moment ago and not yet its record.
    raw_chroma.get_collection("documents_documents", embedding_function=None).delete(ids=[result.document_id])
    report = await service.check_integrity(repair=True)
    chunks = result.document_ids
    assert (report.pending_chunks, report.orphan_chunks, report.chunks_removed) == (len(chunks), 0, 0)


async def test_a_failed_write_leaves_no_chunks_behind(
    service: DocumentService, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inference_api.documents import store

    def broken(*_: object) -> None:
        raise RuntimeError("the store went away")

    # The chunks are written, then writing the document's record fails.
    monkeypatch.setattr(store, "_metadata", broken)
    with pytest.raises(RuntimeError):
        await service.ingest("alice", *sample("txt"))
    assert await service.chunk_count() == 0
    monkeypatch.undo()
    assert not (await service.ingest("alice", *sample("txt"))).duplicate


async def test_build(tmp_path: Path, embedder: Embedder) -> None:
    service = await asyncio.to_thread(
        DocumentService.build, data_dir=tmp_path, chunk_tokens=64, overlap_tokens=8, embedder=embedder
    )
    try:
        result = await service.ingest("alice", "long.pdf", make_pdf(text_pages(1)))
        assert result.chunks > 5
        assert (tmp_path / "chroma").is_dir()
    finally:
        service.close()
    with pytest.raises(ValueError):
        DocumentService.build(data_dir=tmp_path, chunk_tokens=300, embedder=embedder)


async def test_orphan_chunks_do_not_hide_real_results(service: DocumentService, raw_chroma: ClientAPI) -> None:
    # Issue 19: a crash mid-write left a thousand chunks of an unrecorded document; search took the top k
    # first and dropped them after, so k=4 returned 1 hit where it had returned 2.
    result = await service.ingest("alice", *sample("txt"))
    query = (await service.embedder.embed_async([QUERY]))[0]
    orphans = [f"{'f' * 32}-{i}" for i in range(50)]
    raw_chroma.get_collection("documents_chunks", embedding_function=None).upsert(
        ids=orphans,
        embeddings=[query.tolist()] * len(orphans),  # nearer to the query than any real chunk
        documents=[FACT] * len(orphans),
        metadatas=[
            {
                "document_id": "f" * 32,
                "owner": "alice",
                "filename": "crashed.txt",
                "uploaded_at": 0.0,
                "chunk_index": i,
                "char_start": 0,
                "char_end": 1,
            }
            for i in range(len(orphans))
        ],
    )
    hits = await service.search("alice", QUERY, k=4)
    assert hits and {h.document_id for h in hits} == {result.document_id}
