"""Reading an upload under its cap, `Settings.max_upload_bytes` (MAX_UPLOAD_MB): the one number every check uses.

The app's body-size middleware stops reading an /upload body once it passes the cap plus room for its multipart
envelope, so nothing much over it is ever buffered; the route then reads the file itself to the byte of the cap
(before the document service, and its embedding model, is even built), and the service holds any caller to it.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Protocol

from inference_api.api.body_limit import BodyLimit
from inference_api.errors import ErrorCode, ServiceError
from inference_api.settings import Settings

READ_SIZE = 64 * 1024
# Room for the multipart envelope (boundaries, part headers) around a file of the maximum size.
ENVELOPE_BYTES = 64 * 1024


def upload_body_limit(settings: Settings) -> BodyLimit:
    """The cap of the app's body-size middleware on /upload: the file's cap plus its multipart envelope."""
    cap = settings.max_upload_bytes
    return BodyLimit(cap + ENVELOPE_BYTES, payload_too_large(cap).message)


def payload_too_large(max_bytes: int) -> ServiceError:
    return ServiceError(
        ErrorCode.PAYLOAD_TOO_LARGE, f"the upload is larger than the {_size(max_bytes)} limit (MAX_UPLOAD_MB)"
    )


def _size(n: int) -> str:
    mib = n / (1024 * 1024)
    return f"{mib:g} MB" if mib >= 1 else f"{n} bytes"


class AsyncReadable(Protocol):
    """What an upload object offers (Starlette's UploadFile does)."""

    async def read(self, size: int = -1) -> bytes: ...


async def read_limited(
    source: AsyncIterable[bytes] | AsyncReadable, max_bytes: int, *, read_size: int = READ_SIZE
) -> bytes:
    """Read a whole upload, raising PAYLOAD_TOO_LARGE as soon as it passes `max_bytes` (the rest is never read)."""
    buffer = bytearray()
    async for piece in _pieces(source, read_size):
        buffer += piece
        if len(buffer) > max_bytes:
            raise payload_too_large(max_bytes)
    return bytes(buffer)


async def _pieces(source: AsyncIterable[bytes] | AsyncReadable, read_size: int) -> AsyncIterator[bytes]:
    if isinstance(source, AsyncIterable):
        async for piece in source:
            yield piece
        return
    while piece := await source.read(read_size):
        yield piece
