"""Dependencies of the document routes, and of the routes that answer from documents."""

from __future__ import annotations

from typing import Annotated, Protocol, cast

from fastapi import Depends, Request

from inference_api.api.state import app_state
from inference_api.documents.lazy import LazyDocuments


class DocumentsState(Protocol):
    documents: LazyDocuments


def get_documents(request: Request) -> LazyDocuments:
    return cast(DocumentsState, app_state(request)).documents


DocumentsDep = Annotated[LazyDocuments, Depends(get_documents)]
