"""Fixtures for the document tests: the real embedding model, loaded once, and a service per test."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from inference_api.documents import ChromaStore, DocumentService, Embedder

DocumentServiceFactory = Callable[..., DocumentService]


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder.load("cpu")


@pytest.fixture
def make_service(tmp_path: Path, embedder: Embedder) -> Iterator[DocumentServiceFactory]:
    """Services on `tmp_path` (or another folder), each closed at the end of the test."""
    made: list[DocumentService] = []

    def make(data_dir: Path | None = None, **options: object) -> DocumentService:
        store = ChromaStore.open(data_dir=data_dir or tmp_path)
        service = DocumentService(store, embedder, **options)  # type: ignore[arg-type]
        made.append(service)
        return service

    yield make
    for service in made:
        service.close()


@pytest.fixture
def service(make_service: DocumentServiceFactory) -> DocumentService:
    return make_service()
