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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from inference_api.documents.chunking import Chunk, TokenChunker
from inference_api.documents.embedding import Embedder
from inference_api.documents.parsing import DocumentParser, ParsedDocument, detect_file_type, sanitize_filename
from inference_api.documents.repair import check_integrity, remove_duplicates
from inference_api.documents.sandbox import ParseLimits, ParseSandbox
from inference_api.documents.store import DEFAULT_NAME, ChromaStore
from inference_api.documents.types import (
    DeleteResult,
    DocumentInfo,
    DuplicateReport,
    IngestResult,
    IntegrityReport,
    SearchHit,
)
from inference_api.documents.upload import payload_too_large
from inference_api.errors import ErrorCode, ServiceError
from inference_api.keyed_locks import KeyedLocks

logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_CHUNK_TOKENS = 200
DEFAULT_OVERLAP_TOKENS = 40
MAX_SEARCH_K = 100
MAX_QUERY_CHARS = 4096
# Orphan chunks younger than this may belong to an upload still writing; maintenance leaves them be.
DEFAULT_ORPHAN_GRACE_SECONDS = 600.0
_DOCUMENT_ID = re.compile(r"^[0-9a-f]{32}$")


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
        self._locks = KeyedLocks()
        # Called with the owner's name when a document of theirs is stored or deleted.
        self.on_change: list[Callable[[str], object]] = []

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
        async with self._locks.hold(document_id):
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
            finally:
                self._changed(owner)
        logger.info(
            "stored document %s (%s, %d bytes, %d chunks) in %.2fs",
            document_id,
            file_type,
            len(data),
            info.chunks,
            time.perf_counter() - started,
        )
        return _result(info, duplicate=False)

    def _changed(self, owner: str) -> None:
        for listener in self.on_change:
            listener(owner)

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
        async with self._locks.hold(document_id):
            info = await asyncio.to_thread(self._owned, owner, document_id)
            try:
                await asyncio.to_thread(self.store.delete_document, info)
            finally:
                self._changed(owner)
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
        return await asyncio.to_thread(remove_duplicates, self.store)

    async def check_integrity(self, *, repair: bool = False) -> IntegrityReport:
        """Check that every chunk has an embedding and a parent document, and every document all its chunks.

        With `repair`, orphan chunks older than the grace period are deleted.
        """
        return await asyncio.to_thread(
            check_integrity,
            self.store,
            dimensions=self.embedder.dimensions,
            now=self._clock(),
            grace_seconds=self.orphan_grace_seconds,
            repair=repair,
        )

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
