"""The document service, built on first use."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TypeVar

from inference_api.documents.evidence import Evidence
from inference_api.documents.sandbox import ParseLimits
from inference_api.documents.service import DocumentService
from inference_api.documents.store import ChromaStore
from inference_api.documents.types import SearchHit
from inference_api.settings import Settings
from inference_api.torch_threads import in_passing_thread

T = TypeVar("T")


class LazyDocuments:
    """The document service, built on first use: loading the embedding model takes seconds, and a
    server that never sees an upload should not pay for it at start-up."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._service: DocumentService | None = None
        self._lock = asyncio.Lock()
        # Called with an owner's name when a document of theirs is stored or deleted (the service's own hook).
        self.on_change: list[Callable[[str], object]] = []

    @property
    def loaded(self) -> DocumentService | None:
        return self._service

    async def get(self) -> DocumentService:
        async with self._lock:
            if self._service is None:
                settings = self._settings
                self._service = await in_passing_thread(
                    DocumentService.build,
                    data_dir=settings.data_dir / "chroma",
                    device=settings.device,
                    chroma_url=settings.chroma_url,
                    max_upload_bytes=settings.max_upload_bytes,
                    background_bytes=int(settings.ingest_background_mb * 1024 * 1024),
                    parse_limits=ParseLimits(settings.parse_timeout, settings.parse_memory_mb * 1024 * 1024),
                )
                self._service.on_change = self.on_change
            return self._service

    async def run_on_store(self, job: Callable[[ChromaStore | None], T]) -> T:
        """Run `job` in a thread with the service's store (None when the service is not built yet), the service
        not being built meanwhile: a store of another client opened and closed on the same local path while the
        service opens its own tore down the service's (Chroma shares one system per path, and closing any
        client of it closes it for all)."""
        async with self._lock:
            store = self._service.store if self._service is not None else None
            return await asyncio.to_thread(job, store)

    async def search(self, owner: str, query: str, k: int = 5) -> list[SearchHit]:
        return await (await self.get()).search(owner, query, k)

    async def evidence(self, owner: str, question: str, hits: Sequence[SearchHit]) -> list[Evidence | None]:
        return await (await self.get()).evidence(owner, question, hits)

    def close(self) -> None:
        if self._service is not None:
            self._service.close()
