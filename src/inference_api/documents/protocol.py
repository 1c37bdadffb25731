"""Bodies of the document routes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr


class UploadResult(BaseModel):
    document_id: str
    filename: str = Field(description="The name as stored for display; never used as a path.")
    file_type: str
    chunks: int
    document_ids: list[str] = Field(description="Ids of the document's chunks in the vector store.")
    duplicate: bool = Field(description="The same content was already stored for this key: nothing was added.")
    size_bytes: int
    pages: int | None = None
    status: str = Field(
        default="ready",
        description="`ready`, or `processing` for an upload over the background line (INGEST_BACKGROUND_MB; "
        "the response is then 202): follow it with GET /documents/{document_id}.",
    )
    progress: float = Field(default=1.0, description="Share of the work done, 0 to 1.")


class DocumentView(BaseModel):
    document_id: str
    filename: str
    file_type: str
    uploaded_at: float
    chunks: int
    size_bytes: int
    characters: int
    content_hash: str
    pages: int | None = None
    status: str = Field(default="ready", description="`processing`, `ready`, or `failed` (see `error`).")
    progress: float = Field(default=1.0, description="Share of the work done, 0 to 1 (parse, embed, store).")
    error: str | None = Field(default=None, description="Why a `failed` upload was not stored.")


class DocumentList(BaseModel):
    documents: list[DocumentView]


class DeleteResult(BaseModel):
    document_id: str
    chunks_removed: int


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: StrictStr = Field(min_length=1, max_length=4096)
    k: StrictInt = Field(default=5, ge=1, le=100)


class SearchResult(BaseModel):
    document_id: str
    filename: str
    chunk_index: int
    score: float = Field(description="Cosine similarity to the query (1 is identical).")
    lexical_score: float = Field(default=0.0, description="BM25 score of the chunk for the query (0: no term).")
    fused_score: float = Field(default=0.0, description="Reciprocal-rank fusion of both rankings (the order).")
    text: str
    char_start: int
    char_end: int
    page: int | None = None
    place: str | None = None


class SearchResults(BaseModel):
    results: list[SearchResult]


# What the `grounded` field of an answer with use_documents says, on every front-end that reports it.
GROUNDED_DESCRIPTION = "With use_documents: false when the answer draws on none of its sources."


class Source(BaseModel):
    """A document chunk an answer drew on; `[n]` markers in the answer count from 1 in this order."""

    document_id: str
    filename: str
    chunk_index: int
    score: float = Field(description="Cosine similarity of the chunk to the question (1 is identical).")
    excerpt: str
    page: int | None = Field(default=None, description="The PDF page the chunk starts on.")
    place: str | None = Field(
        default=None,
        description='Where in the document: "page 2", "section Guide > Baking" (docx, html, md, epub), '
        '"rows 3-5" (csv, xlsx), "slide 4", "field network" (json), "subject" or "body" (eml).',
    )
    evidence: str | None = Field(default=None, description="The chunk's sentence that best supports the answer.")
    support: float | None = Field(
        default=None, description="The evidence's score: half its cosine to the question, half lexical coverage."
    )
