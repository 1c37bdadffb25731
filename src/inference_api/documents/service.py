"""The document service a router calls: upload, list, get, delete, search, and store maintenance.

Every document belongs to the owner that uploaded it (an API key's name) and is invisible to every
other owner: they get DOCUMENT_NOT_FOUND, as for an id that never existed. A document's id is derived
from its owner and the hash of its bytes, so the same bytes uploaded again by the same owner are
recognised (and not stored twice) by every replica on the same store, even when two uploads race.
Blocking work (parsing, tokenizing, embedding, Chroma calls) runs in threads, off the event loop.
"""

from __future__ import annotations

import asyncio
import bisect
import builtins
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from inference_api.documents.chunking import Chunk, TokenChunker
from inference_api.documents.embedding import Embedder
from inference_api.documents.evidence import Evidence, coverage, question_terms, sentences
from inference_api.documents.lexical import LexicalIndex, reciprocal_rank_fusion, tokenize
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
    chunk_id,
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
# Uploads of at least this size are stored in the background (INGEST_BACKGROUND_MB).
DEFAULT_BACKGROUND_BYTES = 1024 * 1024
MAX_FAILED_KEPT = 1000
# Chunks embedded per step of an upload (progress moves between steps).
EMBED_SLICE = 64
# Each side of hybrid retrieval ranks this many candidates (at least k) before the rankings are fused.
CANDIDATES = 20
# Orphan chunks younger than this may belong to an upload still writing; maintenance leaves them be.
DEFAULT_ORPHAN_GRACE_SECONDS = 600.0
_DOCUMENT_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class _Prepared:
    parsed: ParsedDocument
    chunks: list[Chunk]
    pages: list[int | None]
    places: list[str | None]


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
        background_bytes: int = DEFAULT_BACKGROUND_BYTES,
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
        # BM25 beside the vectors, per owner; filled from the store on an owner's first search.
        self.lexical = LexicalIndex()
        # Uploads of at least this many bytes are stored in the background; their state is kept here (in this
        # process: another replica sees the document once it is stored).
        self.background_bytes = background_bytes
        self._ingestions: dict[str, DocumentInfo] = {}
        self._tasks: set[asyncio.Task[None]] = set()

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
        background_bytes: int = DEFAULT_BACKGROUND_BYTES,
    ) -> DocumentService:
        """Open the store and load the embedding model (blocking, seconds: call it in a thread at start-up)."""
        store = ChromaStore.open(data_dir=data_dir, url=chroma_url, name=collection)
        try:
            embedder = embedder or Embedder.load(device)
            chunker = TokenChunker(embedder.tokenizer, chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens)
            service = cls(
                store,
                embedder,
                chunker=chunker,
                max_upload_bytes=max_upload_bytes,
                parse_limits=parse_limits,
                background_bytes=background_bytes,
            )
            service.sandbox.warm_up()
            return service
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.store.close()

    async def ingest(self, owner: str, filename: str, data: bytes) -> IngestResult:
        """Store an upload's chunks and embeddings; the same bytes again from the same owner are not stored twice.

        An upload of at least `background_bytes` returns at once in state `processing` and is stored by a task of
        its own; `get` shows its progress, then `ready`, or `failed` with the reason.
        """
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
        pending = DocumentInfo(
            document_id=document_id,
            owner=owner,
            filename=display,
            file_type=file_type.value,
            uploaded_at=self._clock(),
            chunks=0,
            size_bytes=len(data),
            characters=0,
            content_hash=content_hash,
            status="processing",
            progress=0.0,
        )
        async with self._locks.hold(document_id):
            existing = await asyncio.to_thread(self.store.get_document, document_id)
            if existing is not None and existing.owner == owner:
                logger.info("upload of document %s is a duplicate", document_id)
                return _result(existing, duplicate=True)
            running = self._ingestions.get(document_id)
            if running is not None and running.status == "processing":
                return _result(running, duplicate=True)
            if len(data) < self.background_bytes:
                return _result(await self._store_upload(pending, data), duplicate=False)
            self._prune_ingestions()
            self._ingestions[document_id] = pending
            task = asyncio.create_task(self._store_in_background(pending, data))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return _result(pending, duplicate=False)

    async def _store_in_background(self, pending: DocumentInfo, data: bytes) -> None:
        document_id = pending.document_id
        try:
            async with self._locks.hold(document_id):
                await self._store_upload(pending, data)
            self._ingestions.pop(document_id, None)
        except ServiceError as exc:
            self._fail(document_id, exc.message)
        except asyncio.CancelledError:
            self._fail(document_id, "the server stopped before the document was stored; upload it again")
            raise
        except Exception:
            logger.exception("storing document %s in the background failed", document_id)
            self._fail(document_id, "an internal error stopped storing the document; upload it again")

    def _fail(self, document_id: str, reason: str) -> None:
        current = self._ingestions.get(document_id)
        if current is not None:
            self._ingestions[document_id] = replace(current, status="failed", error=reason)

    def _progress(self, document_id: str, progress: float) -> None:
        current = self._ingestions.get(document_id)
        if current is not None and current.status == "processing":
            self._ingestions[document_id] = replace(current, progress=round(progress, 3))

    def _prune_ingestions(self) -> None:
        """Failed uploads are remembered (for GET /documents/{id}) up to a bound; the oldest go first."""
        failed = [i for i, info in self._ingestions.items() if info.status == "failed"]
        for document_id in failed[: max(0, len(failed) - MAX_FAILED_KEPT + 1)]:
            del self._ingestions[document_id]

    async def _store_upload(self, pending: DocumentInfo, data: bytes) -> DocumentInfo:
        """Parse, chunk, embed (in batches, reporting progress) and store an upload; the caller holds its lock."""
        document_id, owner = pending.document_id, pending.owner
        started = time.perf_counter()
        parsed = await self.sandbox.parse(pending.filename, data)
        self._progress(document_id, 0.1)
        prepared = await asyncio.to_thread(self._prepare, pending.filename, parsed)
        texts = [c.text for c in prepared.chunks]
        batches = []
        # Embedded a slice at a time: progress moves, and a search waits for one slice, not the whole upload.
        for start in range(0, len(texts), EMBED_SLICE):
            batches.append(await self.embedder.embed_async(texts[start : start + EMBED_SLICE]))
            self._progress(document_id, 0.15 + 0.8 * min(1.0, (start + EMBED_SLICE) / len(texts)))
        embeddings = np.concatenate(batches)
        info = replace(
            pending,
            chunks=len(prepared.chunks),
            characters=len(prepared.parsed.text),
            pages=prepared.parsed.pages,
            status="ready",
            progress=1.0,
        )
        try:
            await asyncio.to_thread(
                self.store.save_document, info, prepared.chunks, prepared.pages, embeddings, prepared.places
            )
            if self.lexical.documents(owner) is not None:
                chunk_texts = [(chunk_id(document_id, c.index), c.text) for c in prepared.chunks]
                await asyncio.to_thread(self.lexical.add, owner, document_id, chunk_texts)
        except Exception:
            # Chunks written before the failure would be orphans until maintenance: take them back now.
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.delete_document, info)
            raise
        finally:
            self._changed(owner)
        seconds = time.perf_counter() - started
        logger.info(
            "stored document %s (%s, %d bytes, %d chunks) in %.2fs",
            document_id,
            info.file_type,
            len(data),
            info.chunks,
            seconds,
        )
        return info

    def _changed(self, owner: str) -> None:
        for listener in self.on_change:
            listener(owner)

    async def list(self, owner: str) -> builtins.list[DocumentInfo]:
        """The owner's documents, oldest first, then the uploads of theirs still processing or failed here."""
        _check_owner(owner)
        stored = await asyncio.to_thread(self.store.list_documents, owner)
        ids = {info.document_id for info in stored}
        return stored + [i for i in self._ingestions.values() if i.owner == owner and i.document_id not in ids]

    async def get(self, owner: str, document_id: str) -> DocumentInfo:
        """One of the owner's documents, or an upload of theirs being stored in the background (or failed)."""
        _check_owner(owner)
        ingestion = self._ingestions.get(document_id)
        if ingestion is not None and ingestion.owner == owner and ingestion.status == "failed":
            return ingestion
        try:
            return await asyncio.to_thread(self._owned, owner, document_id)
        except ServiceError:
            ingestion = self._ingestions.get(document_id)
            if ingestion is not None and ingestion.owner == owner:
                return ingestion
            raise

    async def delete(self, owner: str, document_id: str) -> DeleteResult:
        """Remove a document and every chunk of it."""
        _check_owner(owner)
        async with self._locks.hold(document_id):
            info = await asyncio.to_thread(self._owned, owner, document_id)
            try:
                self.lexical.remove(owner, document_id)
                await asyncio.to_thread(self.store.delete_document, info)
            finally:
                self._changed(owner)
        logger.info("deleted document %s (%d chunks)", document_id, info.chunks)
        return DeleteResult(document_id, info.chunks)

    async def search(self, owner: str, query: str, k: int = 5) -> builtins.list[SearchHit]:
        """The owner's `k` chunks that best match `query`, best first: the dense (cosine) and lexical (BM25)
        rankings of the owner's complete documents, fused by reciprocal rank."""
        _check_owner(owner)
        if not query.strip():
            raise ServiceError(ErrorCode.VALIDATION_ERROR, "query: must not be empty")
        if len(query) > MAX_QUERY_CHARS:
            raise ServiceError(ErrorCode.VALIDATION_ERROR, f"query: must be at most {MAX_QUERY_CHARS} characters")
        if not 1 <= k <= MAX_SEARCH_K:
            raise ServiceError(ErrorCode.VALIDATION_ERROR, f"k: must be between 1 and {MAX_SEARCH_K}")
        embedding = (await self.embedder.embed_async([query]))[0]
        return await asyncio.to_thread(self._hybrid, owner, query, embedding, k)

    def _hybrid(
        self, owner: str, query: str, embedding: np.typing.NDArray[np.float32], k: int
    ) -> builtins.list[SearchHit]:
        complete = self.store.owner_document_ids(owner)
        if not complete:
            return []
        self._sync_lexical(owner, complete)
        candidates = max(k, CANDIDATES)
        dense = self.store.query(owner, embedding, candidates, complete)
        lexical = dict(self.lexical.search(owner, query, candidates, only=set(complete)))
        fused = reciprocal_rank_fusion([[h.chunk_id for h in dense], list(lexical)])
        best = sorted(fused, key=lambda id_: (-fused[id_], id_))[:k]
        by_id = {h.chunk_id: h for h in dense}
        missing = [id_ for id_ in best if id_ not in by_id]
        by_id.update({h.chunk_id: h for h in self.store.chunks_by_id(missing, embedding)})
        return [
            replace(by_id[id_], lexical_score=round(lexical.get(id_, 0.0), 4), fused_score=round(fused[id_], 6))
            for id_ in best
            if id_ in by_id
        ]

    async def evidence(self, owner: str, question: str, hits: Sequence[SearchHit]) -> builtins.list[Evidence | None]:
        """Each hit's best sentence for `question` and its scores (documents/evidence.py); None for a hit
        with no sentence."""
        terms = question_terms(question)
        idf = self.lexical.idf(owner, terms)
        per_hit = [sentences(hit.text) for hit in hits]
        flat = [s for group in per_hit for s in group]
        if not flat:
            return [None] * len(hits)
        vectors = await self.embedder.embed_async([question, *flat])
        similarities = vectors[1:] @ vectors[0]
        found: builtins.list[Evidence | None] = []
        i = 0
        for hit, group in zip(hits, per_hit, strict=True):
            context = set(tokenize(f"{hit.text} {hit.filename} {hit.place or ''}"))
            scored = []
            for position, sentence in enumerate(group):
                candidate = Evidence(sentence, float(similarities[i]), coverage(terms, idf, sentence, context))
                scored.append((candidate.support, position, candidate))
                i += 1
            if not scored:
                found.append(None)
                continue
            scored.sort(key=lambda item: (-item[0], item[1]))
            top_two = sorted(scored[:2], key=lambda item: item[1])
            found.append(replace(scored[0][2], passage=" ".join(item[2].sentence for item in top_two)))
        return found

    def _sync_lexical(self, owner: str, complete: builtins.list[str]) -> None:
        """Bring the owner's lexical index in step with the store: filled on first use, then only the
        documents another replica (or a crash) added or removed are read; in one process uploads and deletes
        keep it in step themselves."""
        indexed = self.lexical.documents(owner)
        if indexed is None:
            self.lexical.ensure_owner(owner)
            indexed = set()
        wanted = set(complete)
        for gone in indexed - wanted:
            self.lexical.remove(owner, gone)
        new = sorted(wanted - indexed)
        if new:
            grouped: dict[str, builtins.list[tuple[str, str]]] = {}
            for id_, document_id, text in self.store.document_texts(new):
                grouped.setdefault(document_id, []).append((id_, text))
            for document_id in new:
                self.lexical.add(owner, document_id, grouped.get(document_id, []))

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
        return _Prepared(parsed, chunks, pages, [place_of(parsed.places, c.char_start, c.char_end) for c in chunks])

    def _owned(self, owner: str, document_id: str) -> DocumentInfo:
        info = self.store.get_document(document_id) if _DOCUMENT_ID.match(document_id) else None
        if info is None or info.owner != owner:
            shown = document_id if len(document_id) <= 64 else document_id[:61] + "..."
            raise ServiceError(ErrorCode.DOCUMENT_NOT_FOUND, f"document {shown!r} not found")
        return info


def place_of(places: tuple[tuple[int, str], ...], start: int, end: int) -> str | None:
    """What a citation calls the span [start, end): the place it starts in, and where it ends when that is
    another page or row of the same kind ("pages 2-3", "rows 4-9"); a heading path is the first one."""
    if not places:
        return None
    starts = [offset for offset, _ in places]
    first = max(0, bisect.bisect_right(starts, start) - 1)
    last = max(first, bisect.bisect_left(starts, end) - 1)
    label, end_label = places[first][1], places[last][1]
    head, _, number = label.rpartition(" ")
    end_head, _, end_number = end_label.rpartition(" ")
    if (
        last > first
        and head == end_head
        and number.isdigit()
        and end_number.isdigit()
        and head.split()[-1]
        in (
            "page",
            "row",
            "slide",
        )
    ):
        return f"{head}s {number}-{end_number}"
    return label


def document_id_for(owner: str, content_hash: str) -> str:
    """The id of an owner's document with these bytes: the same everywhere, and telling nothing of either."""
    return hashlib.sha256(f"{owner}\x00{content_hash}".encode()).hexdigest()[:32]


def _check_owner(owner: str) -> None:
    # Owners come from the authenticated key, never from the client; an empty one is a wiring bug.
    if not owner:
        raise ValueError("a document operation needs the owner's name")


def _result(info: DocumentInfo, *, duplicate: bool) -> IngestResult:
    return IngestResult(
        status=info.status,
        progress=info.progress,
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
