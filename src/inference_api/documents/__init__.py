"""Documents for retrieval-augmented answers: uploads parsed, chunked, embedded and kept in a Chroma store, the
service over them (built on first use), its repair, and grounding: chunks turned into a prompt's sources."""

from inference_api.documents.chunking import Chunk, TokenChunker
from inference_api.documents.embedding import Embedder, EmbeddingModelMissing
from inference_api.documents.parsing import EXTENSIONS, DocumentParser, FileType, ParsedDocument, sanitize_filename
from inference_api.documents.service import DEFAULT_MAX_UPLOAD_BYTES, DocumentService
from inference_api.documents.store import ChromaStore
from inference_api.documents.types import (
    DeleteResult,
    DocumentInfo,
    DuplicateReport,
    IngestResult,
    IntegrityReport,
    SearchHit,
)
from inference_api.documents.upload import read_limited

__all__ = [
    "DEFAULT_MAX_UPLOAD_BYTES",
    "EXTENSIONS",
    "ChromaStore",
    "Chunk",
    "DeleteResult",
    "DocumentInfo",
    "DocumentParser",
    "DocumentService",
    "DuplicateReport",
    "Embedder",
    "EmbeddingModelMissing",
    "FileType",
    "IngestResult",
    "IntegrityReport",
    "ParsedDocument",
    "SearchHit",
    "TokenChunker",
    "read_limited",
    "sanitize_filename",
]
