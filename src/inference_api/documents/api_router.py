"""POST /upload, GET /documents, GET /documents/{id}, DELETE /documents/{id}, POST /documents/search."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request, Response
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from inference_api.api.disconnect import cancel_on_disconnect
from inference_api.api.state import SettingsDep
from inference_api.auth.deps import DocumentsCallerDep
from inference_api.documents.deps import DocumentsDep
from inference_api.documents.protocol import (
    DeleteResult,
    DocumentList,
    DocumentView,
    SearchRequest,
    SearchResult,
    SearchResults,
    UploadResult,
)
from inference_api.documents.types import DocumentInfo
from inference_api.documents.upload import read_limited
from inference_api.errors import ServiceError

router = APIRouter(tags=["documents"])

_UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


def view(info: DocumentInfo) -> DocumentView:
    data = asdict(info)
    data.pop("owner")
    return DocumentView(**data)


def _form_error(message: str) -> ServiceError:
    return ServiceError.invalid("file", message)


@router.post("/upload", response_model=UploadResult, openapi_extra=_UPLOAD_SCHEMA)
async def upload(
    request: Request, response: Response, caller: DocumentsCallerDep, documents: DocumentsDep, settings: SettingsDep
) -> UploadResult:
    """Upload a document (.pdf .txt .docx .html .htm .md .csv .eml .pptx .xlsx .json .epub) as multipart field
    `file`. An upload over INGEST_BACKGROUND_MB is answered at once (202, `status: processing`) and stored in the
    background: GET /documents/{document_id} shows its progress, then `ready` or `failed` with the reason."""
    # The body was capped as it arrived (the app's body-size middleware); the file is read to its exact cap here.
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise _form_error("send multipart/form-data with the document in a field named 'file'")
    try:
        form = await request.form(max_files=1, max_fields=8)
    except MultiPartException as exc:
        raise _form_error(f"malformed multipart body ({exc.message})") from None
    file = form.get("file")
    if not isinstance(file, UploadFile):
        raise _form_error("a multipart field named 'file' holding the document is required")
    try:
        data = await read_limited(file, settings.max_upload_bytes)
        service = await documents.get()
        # A client that leaves stops its parse (the sandbox's child is killed) and everything after it.
        result = await cancel_on_disconnect(request, service.ingest(caller.name, file.filename or "upload", data))
    finally:
        await form.close()
    if result.status == "processing":
        response.status_code = 202
    return UploadResult(**{k: v for k, v in asdict(result).items() if k in UploadResult.model_fields})


@router.get("/documents", response_model=DocumentList)
async def list_documents(caller: DocumentsCallerDep, documents: DocumentsDep) -> DocumentList:
    """Your documents, oldest first."""
    service = await documents.get()
    return DocumentList(documents=[view(info) for info in await service.list(caller.name)])


@router.get("/documents/{document_id}", response_model=DocumentView)
async def get_document(document_id: str, caller: DocumentsCallerDep, documents: DocumentsDep) -> DocumentView:
    """One of your documents."""
    return view(await (await documents.get()).get(caller.name, document_id))


@router.delete("/documents/{document_id}", response_model=DeleteResult)
async def delete_document(document_id: str, caller: DocumentsCallerDep, documents: DocumentsDep) -> DeleteResult:
    """Delete one of your documents and every chunk of it."""
    result = await (await documents.get()).delete(caller.name, document_id)
    return DeleteResult(document_id=result.document_id, chunks_removed=result.chunks_removed)


@router.post("/documents/search", response_model=SearchResults)
async def search_documents(body: SearchRequest, caller: DocumentsCallerDep, documents: DocumentsDep) -> SearchResults:
    """The chunks of your documents that best match `query` (meaning and words: hybrid retrieval), best first."""
    hits = await (await documents.get()).search(caller.name, body.query, body.k)
    return SearchResults(
        results=[
            SearchResult(
                document_id=h.document_id,
                filename=h.filename,
                chunk_index=h.chunk_index,
                score=round(h.score, 4),
                lexical_score=h.lexical_score,
                fused_score=h.fused_score,
                text=h.text,
                char_start=h.char_start,
                char_end=h.char_end,
                page=h.page,
                place=h.place,
            )
            for h in hits
        ]
    )
