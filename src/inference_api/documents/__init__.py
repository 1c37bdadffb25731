"""Documents for retrieval-augmented answers: parsing uploads, chunking, embedding, a Chroma store, and the service."""

from inference_api.documents.chunking import Chunk, TokenChunker
from inference_api.documents.embedding import Embedder, EmbeddingModelMissing
from inference_api.documents.parsing import EXTENSIONS, DocumentParser, FileType, ParsedDocument, sanitize_filename
from inference_api.documents.service import (
    DEFAULT_MAX_UPLOAD_BYTES,
    DocumentService,
    check_declared_size,
    read_limited,
)
from inference_api.documents.store import ChromaStore
from inference_api.documents.types import (
    DeleteResult,
    DocumentInfo,
    DuplicateReport,
    IngestResult,
    IntegrityReport,
    SearchHit,
)

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
    "check_declared_size",
    "read_limited",
    "sanitize_filename",
]
