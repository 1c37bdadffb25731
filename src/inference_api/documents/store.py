"""Chunks and documents in Chroma: a local `PersistentClient` by default, a Chroma server when given a URL.

Two collections under one name: `{name}_chunks` holds every chunk (text, embedding, metadata) and
`{name}_documents` one record per document (its metadata, and the mean of its chunk embeddings).
A document's record is written after its chunks and deleted before them, so it marks a complete
document: chunks without one are an upload in progress or the remains of a failed one, and
`check_integrity` finds them. Embeddings are always passed in: the collections have no embedding
function, so nothing can fall back on Chroma's default (which would download a model).
Every method blocks; the service calls them in a thread.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from inference_api.documents.chunking import Chunk
from inference_api.documents.embedding import Vectors
from inference_api.documents.types import DocumentInfo, SearchHit, chunk_id

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import Metadata, Where

logger = logging.getLogger(__name__)

DEFAULT_NAME = "documents"
_COLLECTION_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]$")
_PAGE = 1000


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as maintenance sees it: its id, metadata, and embedding when asked for."""

    id: str
    metadata: Mapping[str, Any]
    embedding: Vectors | None = None


class ChromaStore:
    def __init__(self, client: ClientAPI, *, name: str = DEFAULT_NAME) -> None:
        for suffix in ("_chunks", "_documents"):
            if not _COLLECTION_NAME.match(name + suffix) or ".." in name:
                raise ValueError(f"{name!r} cannot name Chroma collections (letters, digits, '.', '_', '-')")
        self._client = client
        self.name = name
        space = {"hnsw": {"space": "cosine"}}
        self._chunks = client.get_or_create_collection(
            f"{name}_chunks", embedding_function=None, configuration=cast(Any, space)
        )
        self._documents = client.get_or_create_collection(
            f"{name}_documents", embedding_function=None, configuration=cast(Any, space)
        )
        self._space = _space(self._chunks)
        self._batch = max(1, min(client.get_max_batch_size(), _PAGE))

    @classmethod
    def open(cls, *, data_dir: Path | None = None, url: str | None = None, name: str = DEFAULT_NAME) -> ChromaStore:
        """A Chroma server at `url` when given, else a local store under `data_dir/chroma`."""
        import chromadb
        from chromadb.config import Settings

        settings = Settings(anonymized_telemetry=False)
        if url:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("CHROMA_URL must be an http(s) URL with a host")
            https = parts.scheme == "https"
            client = chromadb.HttpClient(
                host=parts.hostname, port=parts.port or (443 if https else 8000), ssl=https, settings=settings
            )
        elif data_dir is not None:
            path = Path(data_dir) / "chroma"
            path.mkdir(parents=True, exist_ok=True)
            client = chromadb.PersistentClient(path=str(path), settings=settings)
        else:
            raise ValueError("a Chroma store needs a data directory or a server URL")
        return cls(client, name=name)

    def close(self) -> None:
        """Release the client (a local store's files are closed once no client in the process uses them)."""
        close = getattr(self._client, "close", None)
        if close is not None:
            close()

    def heartbeat(self) -> None:
        """Raise when the store cannot be reached."""
        self._client.heartbeat()

    # Documents.

    def get_document(self, document_id: str) -> DocumentInfo | None:
        found = self._documents.get(ids=[document_id], include=["metadatas"])
        metadatas = found["metadatas"] or []
        return _document(found["ids"][0], metadatas[0]) if found["ids"] else None

    def list_documents(self, owner: str) -> list[DocumentInfo]:
        found = self._documents.get(where={"owner": owner}, include=["metadatas"])
        documents = [_document(i, m) for i, m in zip(found["ids"], found["metadatas"] or [], strict=True)]
        return sorted(documents, key=lambda d: (d.uploaded_at, d.document_id))

    def all_documents(self) -> list[DocumentInfo]:
        documents = []
        for offset in range(0, self._documents.count(), _PAGE):
            found = self._documents.get(include=["metadatas"], limit=_PAGE, offset=offset)
            documents += [_document(i, m) for i, m in zip(found["ids"], found["metadatas"] or [], strict=True)]
        return documents

    def existing_documents(self, document_ids: Sequence[str]) -> set[str]:
        if not document_ids:
            return set()
        return set(self._documents.get(ids=list(document_ids), include=[])["ids"])

    def owner_document_ids(self, owner: str) -> list[str]:
        """The owner's complete documents (those with a record)."""
        return self._documents.get(where={"owner": owner}, include=[])["ids"]

    def document_texts(self, document_ids: Sequence[str]) -> list[tuple[str, str, str]]:
        """(chunk id, document id, text) of every chunk of these documents (to fill the lexical index)."""
        found: list[tuple[str, str, str]] = []
        for start in range(0, len(document_ids), 100):
            where = cast("Where", {"document_id": {"$in": list(document_ids[start : start + 100])}})
            got = self._chunks.get(where=where, include=["documents", "metadatas"])
            for id_, text, metadata in zip(got["ids"], got["documents"] or [], got["metadatas"] or [], strict=True):
                found.append((id_, str(metadata["document_id"]), text))
        return found

    def chunks_by_id(self, ids: Sequence[str], embedding: Vectors) -> list[SearchHit]:
        """These chunks as hits, each scored by cosine similarity to `embedding` (the lexical side's finds)."""
        if not ids:
            return []
        got = self._chunks.get(ids=list(ids), include=["documents", "metadatas", "embeddings"])
        vectors: Any = got["embeddings"]
        hits = []
        for i, (id_, text, metadata) in enumerate(
            zip(got["ids"], got["documents"] or [], got["metadatas"] or [], strict=True)
        ):
            vector = np.asarray(vectors[i], dtype=np.float32)
            hits.append(_hit(id_, metadata, text, float(vector @ embedding.reshape(-1))))
        return hits

    def save_document(
        self,
        info: DocumentInfo,
        chunks: Sequence[Chunk],
        pages: Sequence[int | None],
        embeddings: Vectors,
        places: Sequence[str | None] | None = None,
    ) -> None:
        """Write every chunk, then the document's record (which makes the document visible)."""
        if not (len(chunks) == len(pages) == len(embeddings) == info.chunks):
            raise ValueError("a document's chunks, pages and embeddings must all have one entry per chunk")
        base: dict[str, str | int | float | bool] = {
            "document_id": info.document_id,
            "owner": info.owner,
            "filename": info.filename,
            "file_type": info.file_type,
            "uploaded_at": info.uploaded_at,
            "content_hash": info.content_hash,
        }
        for start in range(0, len(chunks), self._batch):
            batch = chunks[start : start + self._batch]
            metadatas: list[Metadata] = []
            batch_places = (places or [None] * len(chunks))[start : start + self._batch]
            for chunk, page, place in zip(batch, pages[start : start + self._batch], batch_places, strict=True):
                metadata = dict(base, chunk_index=chunk.index, char_start=chunk.char_start, char_end=chunk.char_end)
                if page is not None:
                    metadata["page"] = page
                if place:
                    metadata["place"] = place
                metadatas.append(metadata)
            self._chunks.upsert(
                ids=[chunk_id(info.document_id, c.index) for c in batch],
                embeddings=embeddings[start : start + self._batch],
                documents=[c.text for c in batch],
                metadatas=metadatas,
            )
        self._documents.upsert(ids=[info.document_id], embeddings=_mean(embeddings), metadatas=[_metadata(info)])

    def delete_document(self, info: DocumentInfo) -> None:
        """Remove the record first (the document disappears at once), then every chunk in one call."""
        self._documents.delete(ids=[info.document_id])
        self._chunks.delete(where={"document_id": info.document_id})

    # Chunks.

    def query(self, owner: str, embedding: Vectors, k: int, complete: Sequence[str] | None = None) -> list[SearchHit]:
        """The owner's `k` chunks nearest to `embedding`, best first, from complete documents only (`complete`:
        the owner's complete documents when the caller has just listed them)."""
        # Only documents with a record count, and the filter goes into the query itself: filtered after
        # ranking, the chunks of an upload that never finished (a crash mid-write left a thousand) took the
        # top k places and then dropped out, hiding the real results behind them.
        if complete is None:
            complete = self.owner_document_ids(owner)
        if not complete:
            return []
        where = cast("Where", {"$and": [{"owner": owner}, {"document_id": {"$in": list(complete)}}]})
        found = self._chunks.query(
            query_embeddings=embedding.reshape(1, -1),
            n_results=k,
            where=where,
            include=["documents", "metadatas", "distances"],
        )
        ids = found["ids"][0]
        metadatas = (found["metadatas"] or [[]])[0]
        texts = (found["documents"] or [[]])[0]
        distances = (found["distances"] or [[]])[0]
        # A chunk whose document record is gone belongs to a delete or an upload still under way.
        live = self.existing_documents(sorted({str(m["document_id"]) for m in metadatas}))
        hits = []
        for id_, metadata, text, distance in zip(ids, metadatas, texts, distances, strict=True):
            if metadata["document_id"] not in live:
                continue
            hits.append(_hit(id_, metadata, text, self._similarity(float(distance))))
        return hits

    def chunk_count(self) -> int:
        return self._chunks.count()

    def document_chunk_ids(self, document_id: str) -> list[str]:
        return self._chunks.get(where={"document_id": document_id}, include=[])["ids"]

    def iter_chunks(self, *, with_embeddings: bool = False) -> Iterator[StoredChunk]:
        """Every chunk, a page at a time (for maintenance: chunks written meanwhile may be missed)."""
        include: list[Any] = ["metadatas", "embeddings"] if with_embeddings else ["metadatas"]
        offset = 0
        while True:
            found = self._chunks.get(include=include, limit=_PAGE, offset=offset)
            ids = found["ids"]
            if not ids:
                return
            metadatas = found["metadatas"] or [{} for _ in ids]
            embeddings: Any = found["embeddings"] if with_embeddings else None
            for i, (id_, metadata) in enumerate(zip(ids, metadatas, strict=True)):
                vector = None
                if embeddings is not None and embeddings[i] is not None:
                    vector = np.asarray(embeddings[i], dtype=np.float32)
                yield StoredChunk(id_, metadata or {}, vector)
            offset += len(ids)

    def delete_chunks(self, ids: Sequence[str]) -> None:
        for start in range(0, len(ids), self._batch):
            self._chunks.delete(ids=list(ids[start : start + self._batch]))

    def _similarity(self, distance: float) -> float:
        # Chroma reports distances; with unit vectors each space converts to cosine similarity.
        return 1.0 - distance / 2.0 if self._space == "l2" else 1.0 - distance


def _hit(id_: str, metadata: Mapping[str, Any], text: str, score: float) -> SearchHit:
    page = metadata.get("page")
    place = metadata.get("place")
    return SearchHit(
        document_id=str(metadata["document_id"]),
        chunk_id=id_,
        chunk_index=int(cast(int, metadata["chunk_index"])),
        filename=str(metadata["filename"]),
        text=text,
        score=score,
        char_start=int(cast(int, metadata["char_start"])),
        char_end=int(cast(int, metadata["char_end"])),
        page=int(cast(int, page)) if page is not None else None,
        place=str(place) if place is not None else None,
    )


def _space(collection: Collection) -> str:
    configuration = cast(dict[str, Any], collection.configuration or {})
    for index in ("hnsw", "spann"):
        settings = configuration.get(index)
        if isinstance(settings, dict) and settings.get("space"):
            return str(settings["space"])
    return "l2"


def _mean(embeddings: Vectors) -> Vectors:
    mean = embeddings.mean(axis=0, keepdims=True)
    norm = float(np.linalg.norm(mean))
    unit: Vectors = (mean / norm if norm > 0 else mean).astype(np.float32)
    return unit


def _metadata(info: DocumentInfo) -> Metadata:
    metadata: dict[str, str | int | float | bool] = {
        "owner": info.owner,
        "filename": info.filename,
        "file_type": info.file_type,
        "uploaded_at": info.uploaded_at,
        "chunks": info.chunks,
        "size_bytes": info.size_bytes,
        "characters": info.characters,
        "content_hash": info.content_hash,
    }
    if info.pages is not None:
        metadata["pages"] = info.pages
    return metadata


def _document(document_id: str, metadata: Mapping[str, Any] | None) -> DocumentInfo:
    m = metadata or {}
    pages = m.get("pages")
    return DocumentInfo(
        document_id=document_id,
        owner=str(m.get("owner", "")),
        filename=str(m.get("filename", "")),
        file_type=str(m.get("file_type", "")),
        uploaded_at=float(m.get("uploaded_at", 0.0)),
        chunks=int(m.get("chunks", 0)),
        size_bytes=int(m.get("size_bytes", 0)),
        characters=int(m.get("characters", 0)),
        content_hash=str(m.get("content_hash", "")),
        pages=int(pages) if pages is not None else None,
    )
