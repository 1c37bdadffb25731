"""What the document service hands back: plain frozen records a router can serialize field by field."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DocumentInfo:
    """One stored document of one owner; `chunks` of it are in the vector store as `chunk_ids`."""

    document_id: str
    owner: str
    filename: str
    file_type: str
    uploaded_at: float
    chunks: int
    size_bytes: int
    characters: int
    content_hash: str
    pages: int | None = None
    # Uploads over the background line are stored after the upload returns: `processing` (with `progress`,
    # 0 to 1) until `ready`, or `failed` with the reason in `error`. Stored documents are all `ready`.
    status: str = "ready"
    progress: float = 1.0
    error: str | None = None

    @property
    def chunk_ids(self) -> list[str]:
        return [chunk_id(self.document_id, i) for i in range(self.chunks)]


@dataclass(frozen=True)
class IngestResult:
    """An upload's outcome; `duplicate` when the owner had stored the same bytes before (nothing new stored)."""

    document_id: str
    filename: str
    file_type: str
    chunks: int
    document_ids: list[str]
    duplicate: bool
    size_bytes: int
    content_hash: str
    pages: int | None = None
    status: str = "ready"  # `processing`: stored in the background, follow it with GET /documents/{id}
    progress: float = 1.0


@dataclass(frozen=True)
class SearchHit:
    """A chunk that matched a query; `score` is cosine similarity (1 is identical), `lexical_score` its BM25
    score (0: no query term in it), `fused_score` its reciprocal-rank fusion of both rankings (the order)."""

    document_id: str
    chunk_id: str
    chunk_index: int
    filename: str
    text: str
    score: float
    char_start: int
    char_end: int
    page: int | None = None
    place: str | None = None  # where in the document: "page 2", "section Guide > Baking", "rows 3-5"
    lexical_score: float = 0.0
    fused_score: float = 0.0


@dataclass(frozen=True)
class DeleteResult:
    document_id: str
    chunks_removed: int


@dataclass(frozen=True)
class DuplicateReport:
    """What `remove_duplicate_chunks` found and removed."""

    documents_scanned: int
    chunks_scanned: int
    documents_removed: int
    chunks_removed: int
    seconds: float


@dataclass(frozen=True)
class IntegrityReport:
    """What `check_integrity` found: chunks without a usable embedding or a parent, documents missing chunks.

    Orphans younger than the grace period are counted as `pending`: an upload may be writing them now.
    """

    documents_checked: int
    chunks_checked: int
    missing_embeddings: int
    orphan_chunks: int
    pending_chunks: int
    incomplete_documents: int
    chunks_removed: int
    seconds: float
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing_embeddings or self.orphan_chunks or self.incomplete_documents)


def chunk_id(document_id: str, index: int) -> str:
    """A chunk's id: derived, so a retried or concurrent upload of the same document writes the same records."""
    return f"{document_id}-{index}"
