"""Store repair, run by maintenance: duplicates removed, orphan chunks found and (past a grace period) removed.

Blocking (Chroma calls over every chunk): the document service runs these in a thread.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import numpy as np

from inference_api.documents.store import ChromaStore
from inference_api.documents.types import DocumentInfo, DuplicateReport, IntegrityReport, chunk_id

logger = logging.getLogger(__name__)


def remove_duplicates(store: ChromaStore) -> DuplicateReport:
    """Remove documents stored twice by one owner (keeping the oldest) and chunks stored twice in a document."""
    started = time.perf_counter()
    documents = store.all_documents()
    groups: defaultdict[tuple[str, str], list[DocumentInfo]] = defaultdict(list)
    for info in documents:
        groups[(info.owner, info.content_hash)].append(info)
    documents_removed = chunks_removed = 0
    for copies in groups.values():
        # The oldest copy is the one its owner has had longest (and may have cited): it stays.
        copies.sort(key=lambda d: (d.uploaded_at, d.document_id))
        for extra in copies[1:]:
            chunks_removed += len(store.document_chunk_ids(extra.document_id))
            store.delete_document(extra)
            documents_removed += 1
    seen: dict[tuple[str, int], str] = {}
    extra_chunks: list[str] = []
    scanned = 0
    for chunk in store.iter_chunks():
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
    store.delete_chunks(extra_chunks)
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


def check_integrity(
    store: ChromaStore, *, dimensions: int, now: float, grace_seconds: float, repair: bool
) -> IntegrityReport:
    """Check that every chunk has an embedding and a parent document, and every document all its chunks.

    With `repair`, orphan chunks older than `grace_seconds` (younger ones may belong to an upload still writing)
    are deleted.
    """
    started = time.perf_counter()
    documents = {d.document_id: d for d in store.all_documents()}
    counts: defaultdict[str, int] = defaultdict(int)
    missing: list[str] = []
    orphans: list[str] = []
    pending = checked = 0
    for chunk in store.iter_chunks(with_embeddings=True):
        checked += 1
        parent = str(chunk.metadata.get("document_id", ""))
        vector = chunk.embedding
        if vector is None or vector.shape != (dimensions,) or not np.isfinite(vector).all():
            missing.append(chunk.id)
        if parent in documents:
            counts[parent] += 1
        elif now - float(chunk.metadata.get("uploaded_at", 0.0)) < grace_seconds:
            pending += 1
        else:
            orphans.append(chunk.id)
    incomplete = [d for d in documents.values() if counts[d.document_id] != d.chunks]
    removed = 0
    if repair and orphans:
        store.delete_chunks(orphans)
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
