"""The document service a router calls: upload, list, get, delete, search, and store maintenance.

Every document belongs to the owner that uploaded it (an API key's name) and is invisible to every
other owner: they get DOCUMENT_NOT_FOUND, as for an id that never existed. A document's id is derived
from its owner and the hash of its bytes, so the same bytes uploaded again by the same owner are
recognised (and not stored twice) by every replica on the same store, even when two uploads race.
Blocking work (parsing, tokenizing, embedding, Chroma calls) runs in threads, off the event loop.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import logging
import re
import time
from collections import defaultdict
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from inference_api.documents.chunking import Chunk, TokenChunker
from inference_api.documents.embedding import Embedder
from inference_api.documents.parsing import DocumentParser, ParsedDocument, detect_file_type, sanitize_filename
from inference_api.documents.sandbox import ParseLimits, ParseSandbox
from inference_api.documents.store import DEFAULT_NAME, ChromaStore
from inference_api.documents.types import (
    DeleteResult,
    DocumentInfo,
    DuplicateReport,
    IngestResult,
    IntegrityReport,
    SearchHit,
    chunk_id,
)
from inference_api.errors import ErrorCode, ServiceError

logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_CHUNK_TOKENS = 200
DEFAULT_OVERLAP_TOKENS = 40
MAX_SEARCH_K = 100
MAX_QUERY_CHARS = 4096
# Orphan chunks younger than this may belong to an upload still writing; maintenance leaves them be.
DEFAULT_ORPHAN_GRACE_SECONDS = 600.0
_DOCUMENT_ID = re.compile(r"^[0-9a-f]{32}$")
_READ_SIZE = 64 * 1024


class AsyncReadable(Protocol):
    """What an upload object offers (Starlette's UploadFile does)."""

    async def read(self, size: int = -1) -> bytes: ...


async def read_limited(
    source: AsyncIterable[bytes] | AsyncReadable, max_bytes: int, *, read_size: int = _READ_SIZE
) -> bytes:
    """Read a whole upload, raising PAYLOAD_TOO_LARGE as soon as it passes `max_bytes` (the rest is never read)."""
    buffer = bytearray()
    async for piece in _pieces(source, read_size):
        buffer += piece
        if len(buffer) > max_bytes:
            raise payload_too_large(max_bytes)
    return bytes(buffer)


def check_declared_size(content_length: str | None, max_bytes: int) -> None:
    """Refuse an upload up front when its Content-Length already says it is over the cap."""
    if content_length is not None and content_length.strip().isdigit() and int(content_length) > max_bytes:
        raise payload_too_large(max_bytes)


def payload_too_large(max_bytes: int) -> ServiceError:
    return ServiceError(
        ErrorCode.PAYLOAD_TOO_LARGE, f"the upload is larger than the {_size(max_bytes)} limit (MAX_UPLOAD_MB)"
    )


async def _pieces(source: AsyncIterable[bytes] | AsyncReadable, read_size: int) -> AsyncIterator[bytes]:
    if isinstance(source, AsyncIterable):
        async for piece in source:
            yield piece
        return
    while piece := await source.read(read_size):
        yield piece


@dataclass(frozen=True)
class _Prepared:
    parsed: ParsedDocument
    chunks: list[Chunk]
    pages: list[int | None]


class DocumentService:
    def __init__(
        self,
        store: ChromaStore,
        embedder: Embedder,
        *,
        parser: DocumentParser | None = None,
        chunker: TokenChunker | None = None,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        orphan_grace_seconds: float = DEFAULT_ORPHAN_GRACE_SECONDS,
        clock: Callable[[], float] = time.time,
        parse_limits: ParseLimits | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.parser = parser or DocumentParser()
        # Uploads are parsed in a bounded child process, never in this one (see documents/sandbox.py).
        self.sandbox = ParseSandbox(self.parser, parse_limits)
        self.chunker = chunker or TokenChunker(
            embedder.tokenizer,
            chunk_tokens=min(DEFAULT_CHUNK_TOKENS, embedder.max_tokens),
            overlap_tokens=DEFAULT_OVERLAP_TOKENS,
        )
        if self.chunker.chunk_tokens > embedder.max_tokens:
            raise ValueError(
                f"chunks of {self.chunker.chunk_tokens} tokens exceed the embedding model's {embedder.max_tokens}"
            )
        self.max_upload_bytes = max_upload_bytes
        self.orphan_grace_seconds = orphan_grace_seconds
        self._clock = clock
        # Two uploads of the same document in this process queue instead of both doing the work.
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiters: defaultdict[str, int] = defaultdict(int)

    @classmethod
    def build(
        cls,
        *,
        data_dir: Path | None = None,
        chroma_url: str | None = None,
        device: str | torch.device = "cpu",
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        collection: str = DEFAULT_NAME,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        overlap_tokens: int = DEFAULT_OVERLAP_TOKENS,
        embedder: Embedder | None = None,
        parse_limits: ParseLimits | None = None,
    ) -> DocumentService:
        """Open the store and load the embedding model (blocking, seconds: call it in a thread at start-up)."""
        store = ChromaStore.open(data_dir=data_dir, url=chroma_url, name=collection)
        try:
            embedder = embedder or Embedder.load(device)
            chunker = TokenChunker(embedder.tokenizer, chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens)
            service = cls(
                store, embedder, chunker=chunker, max_upload_bytes=max_upload_bytes, parse_limits=parse_limits
            )
            service.sandbox.warm_up()
            return service
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        self.store.close()

    async def ingest(self, owner: str, filename: str, data: bytes) -> IngestResult:
        """Store an upload's chunks and embeddings; the same bytes again from the same owner are not stored twice."""
        _check_owner(owner)
        if len(data) > self.max_upload_bytes:
            raise payload_too_large(self.max_upload_bytes)
        display = sanitize_filename(filename)
        # The cheap check first: a disguised file is refused even when its bytes were stored before.
        # (Cheap, not free: it decodes a text upload whole, so it runs in a thread too.)
        file_type = await asyncio.to_thread(
            detect_file_type, display, data, max_unpacked_bytes=self.parser.max_unpacked_bytes
        )
        content_hash = hashlib.sha256(data).hexdigest()
        document_id = document_id_for(owner, content_hash)
        async with self._lock(document_id):
            existing = await asyncio.to_thread(self.store.get_document, document_id)
            if existing is not None and existing.owner == owner:
                logger.info("upload of document %s is a duplicate", document_id)
                return _result(existing, duplicate=True)
            started = time.perf_counter()
            parsed = await self.sandbox.parse(display, data)
            prepared = await asyncio.to_thread(self._prepare, display, parsed)
            embeddings = await self.embedder.embed_async([c.text for c in prepared.chunks])
            info = DocumentInfo(
                document_id=document_id,
                owner=owner,
                filename=display,
                file_type=file_type.value,
                uploaded_at=self._clock(),
                chunks=len(prepared.chunks),
                size_bytes=len(data),
                characters=len(prepared.parsed.text),
                content_hash=content_hash,
                pages=prepared.parsed.pages,
            )
            try:
                await asyncio.to_thread(self.store.save_document, info, prepared.chunks, prepared.pages, embeddings)
            except Exception:
                # Chunks written before the failure would be orphans until maintenance: take them back now.
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.store.delete_document, info)
                raise
        logger.info(
            "stored document %s (%s, %d bytes, %d chunks) in %.2fs",
            document_id,
            file_type,
            len(data),
            info.chunks,
            time.perf_counter() - started,
        )
        return _result(info, duplicate=False)

    async def list(self, owner: str) -> builtins.list[DocumentInfo]:
        """The owner's documents, oldest first."""
        _check_owner(owner)
        return await asyncio.to_thread(self.store.list_documents, owner)

    async def get(self, owner: str, document_id: str) -> DocumentInfo:
        _check_owner(owner)
        return await asyncio.to_thread(self._owned, owner, document_id)

    async def delete(self, owner: str, document_id: str) -> DeleteResult:
        """Remove a document and every chunk of it."""
        _check_owner(owner)
        async with self._lock(document_id):
            info = await asyncio.to_thread(self._owned, owner, document_id)
            await asyncio.to_thread(self.store.delete_document, info)
        logger.info("deleted document %s (%d chunks)", document_id, info.chunks)
        return DeleteResult(document_id, info.chunks)

    async def search(self, owner: str, query: str, k: int = 5) -> builtins.list[SearchHit]:
        """The owner's `k` chunks most similar to `query`, best first."""
        _check_owner(owner)
        if not query.strip():
            raise ServiceError(ErrorCode.VALIDATION_ERROR, "query: must not be empty")
        if len(query) > MAX_QUERY_CHARS:
            raise ServiceError(ErrorCode.VALIDATION_ERROR, f"query: must be at most {MAX_QUERY_CHARS} characters")
        if not 1 <= k <= MAX_SEARCH_K:
            raise ServiceError(ErrorCode.VALIDATION_ERROR, f"k: must be between 1 and {MAX_SEARCH_K}")
        embedding = await self.embedder.embed_async([query])
        return await asyncio.to_thread(self.store.query, owner, embedding[0], k)

    async def chunk_count(self) -> int:
        """Chunks in the store, every owner's (the `vector_store_chunks` gauge)."""
        return await asyncio.to_thread(self.store.chunk_count)

    async def remove_duplicate_chunks(self) -> DuplicateReport:
        """Remove documents stored twice by one owner (keeping the oldest) and chunks stored twice in a document."""
        return await asyncio.to_thread(self._remove_duplicates)

    async def check_integrity(self, *, repair: bool = False) -> IntegrityReport:
        """Check that every chunk has an embedding and a parent document, and every document all its chunks.

        With `repair`, orphan chunks older than the grace period are deleted.
        """
        return await asyncio.to_thread(self._check_integrity, repair)

    def _prepare(self, display: str, parsed: ParsedDocument) -> _Prepared:
        chunks = self.chunker.split(parsed.text)
        if not chunks:
            raise ServiceError(ErrorCode.DOCUMENT_PROCESSING_ERROR, f"{display!r} contains no extractable text")
        pages: list[int | None] = [None] * len(chunks)
        if parsed.page_starts:
            starts = np.asarray(parsed.page_starts)
            pages = [int(np.searchsorted(starts, c.char_start, side="right")) for c in chunks]
        return _Prepared(parsed, chunks, pages)

    def _owned(self, owner: str, document_id: str) -> DocumentInfo:
        info = self.store.get_document(document_id) if _DOCUMENT_ID.match(document_id) else None
        if info is None or info.owner != owner:
            shown = document_id if len(document_id) <= 64 else document_id[:61] + "..."
            raise ServiceError(ErrorCode.DOCUMENT_NOT_FOUND, f"document {shown!r} not found")
        return info

    def _remove_duplicates(self) -> DuplicateReport:
        started = time.perf_counter()
        documents = self.store.all_documents()
        groups: defaultdict[tuple[str, str], builtins.list[DocumentInfo]] = defaultdict(builtins.list)
        for info in documents:
            groups[(info.owner, info.content_hash)].append(info)
        documents_removed = chunks_removed = 0
        for copies in groups.values():
            # The oldest copy is the one its owner has had longest (and may have cited): it stays.
            copies.sort(key=lambda d: (d.uploaded_at, d.document_id))
            for extra in copies[1:]:
                chunks_removed += len(self.store.document_chunk_ids(extra.document_id))
                self.store.delete_document(extra)
                documents_removed += 1
        seen: dict[tuple[str, int], str] = {}
        extra_chunks: builtins.list[str] = []
        scanned = 0
        for chunk in self.store.iter_chunks():
            scanned += 1
            parent, index = chunk.metadata.get("document_id"), chunk.metadata.get("chunk_index")
            if not isinstance(parent, str) or not isinstance(index, int):
                continue  # not written by this service: not ours to judge
            key = (parent, index)
            kept = seen.get(key)
            if kept is None:
                seen[key] = chunk.id
            elif chunk.id == chunk_id(*key):
                # Keep the copy under the id the service itself writes.
                extra_chunks.append(kept)
                seen[key] = chunk.id
            else:
                extra_chunks.append(chunk.id)
        self.store.delete_chunks(extra_chunks)
        chunks_removed += len(extra_chunks)
        report = DuplicateReport(
            documents_scanned=len(documents),
            chunks_scanned=scanned,
            documents_removed=documents_removed,
            chunks_removed=chunks_removed,
            seconds=time.perf_counter() - started,
        )
        if documents_removed or chunks_removed:
            logger.warning("duplicate removal: %s", report)
        return report

    def _check_integrity(self, repair: bool) -> IntegrityReport:
        started = time.perf_counter()
        documents = {d.document_id: d for d in self.store.all_documents()}
        dimensions = self.embedder.dimensions
        now = self._clock()
        counts: defaultdict[str, int] = defaultdict(int)
        missing: builtins.list[str] = []
        orphans: builtins.list[str] = []
        pending = checked = 0
        for chunk in self.store.iter_chunks(with_embeddings=True):
            checked += 1
            parent = str(chunk.metadata.get("document_id", ""))
            vector = chunk.embedding
            if vector is None or vector.shape != (dimensions,) or not np.isfinite(vector).all():
                missing.append(chunk.id)
            if parent in documents:
                counts[parent] += 1
            elif now - float(chunk.metadata.get("uploaded_at", 0.0)) < self.orphan_grace_seconds:
                pending += 1
            else:
                orphans.append(chunk.id)
        incomplete = [d for d in documents.values() if counts[d.document_id] != d.chunks]
        removed = 0
        if repair and orphans:
            self.store.delete_chunks(orphans)
            removed = len(orphans)
        report = IntegrityReport(
            documents_checked=len(documents),
            chunks_checked=checked,
            missing_embeddings=len(missing),
            orphan_chunks=len(orphans),
            pending_chunks=pending,
            incomplete_documents=len(incomplete),
            chunks_removed=removed,
            seconds=time.perf_counter() - started,
            examples=(missing + orphans + [d.document_id for d in incomplete])[:20],
        )
        if not report.ok:
            logger.warning("vector store integrity: %s", report)
        return report

    @contextlib.asynccontextmanager
    async def _lock(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._waiters[key] += 1
        try:
            async with lock:
                yield
        finally:
            self._waiters[key] -= 1
            if not self._waiters[key]:
                del self._waiters[key]
                del self._locks[key]


def document_id_for(owner: str, content_hash: str) -> str:
    """The id of an owner's document with these bytes: the same everywhere, and telling nothing of either."""
    return hashlib.sha256(f"{owner}\x00{content_hash}".encode()).hexdigest()[:32]


def _check_owner(owner: str) -> None:
    # Owners come from the authenticated key, never from the client; an empty one is a wiring bug.
    if not owner:
        raise ValueError("a document operation needs the owner's name")


def _result(info: DocumentInfo, *, duplicate: bool) -> IngestResult:
    return IngestResult(
        document_id=info.document_id,
        filename=info.filename,
        file_type=info.file_type,
        chunks=info.chunks,
        document_ids=info.chunk_ids,
        duplicate=duplicate,
        size_bytes=info.size_bytes,
        content_hash=info.content_hash,
        pages=info.pages,
    )


def _size(n: int) -> str:
    mib = n / (1024 * 1024)
    return f"{mib:g} MB" if mib >= 1 else f"{n} bytes"
