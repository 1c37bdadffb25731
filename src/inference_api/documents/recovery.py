"""Start-up recovery of the vector store: the chunks a crashed upload left without a document record.

An upload writes its chunks first and its document's record last (documents/store.py), so a process
killed in between leaves chunks that no record names. Search no longer sees them (it asks only for the
chunks of recorded documents), but they take space and count in `vector_store_chunks` until the periodic
integrity check, which leaves orphans alone for a grace period (an upload of another replica may be
writing them). At start-up more is known: every chunk written before this process started by the
local store's only writer (this service) and left without a record is an orphan now.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from inference_api.documents.store import ChromaStore

logger = logging.getLogger(__name__)


def sweep_orphans(store: ChromaStore, *, older_than: float) -> dict[str, Any]:
    """Delete the chunks whose document has no record and that were written before `older_than` (epoch s)."""
    started = time.perf_counter()
    recorded = {info.document_id for info in store.all_documents()}
    orphans: list[str] = []
    checked = 0
    for chunk in store.iter_chunks():
        checked += 1
        parent = chunk.metadata.get("document_id")
        if not isinstance(parent, str) or parent in recorded:
            continue  # a chunk not written by this service is not ours to judge
        written = chunk.metadata.get("uploaded_at")
        if isinstance(written, int | float) and written < older_than:
            orphans.append(chunk.id)
    store.delete_chunks(orphans)
    if orphans:
        logger.warning("removed %d orphan chunks left by an interrupted upload", len(orphans))
    return {
        "chunks_checked": checked,
        "orphans_removed": len(orphans),
        "seconds": round(time.perf_counter() - started, 4),
    }


def sweep_at_start(
    *,
    data_dir: Path,
    chroma_url: str | None,
    process_started: float,
    grace_seconds: float,
    store: ChromaStore | None = None,
) -> dict[str, Any]:
    """The sweep a starting replica runs (blocking: in a thread), on `store` when the document service has one
    open, else on a store of its own. A local store has no other writer, so every orphan older than this process
    goes; a shared server may have other replicas mid-upload: they get the periodic check's grace period."""
    older_than = process_started - grace_seconds if chroma_url else process_started
    if store is not None:
        return sweep_orphans(store, older_than=older_than)
    own = ChromaStore.open(data_dir=data_dir, url=chroma_url)
    try:
        return sweep_orphans(own, older_than=older_than)
    finally:
        own.close()
