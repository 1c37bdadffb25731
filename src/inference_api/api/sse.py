"""Server-Sent Events: the one way a route streams (/infer, chat messages, the OpenAI routes)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse

# No caching, and no buffering by a proxy in front (nginx honours X-Accel-Buffering), so each event leaves at once.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(payload: object, event: str | None = None) -> str:
    """One event: an optional `event:` line, then the payload as JSON on one `data:` line."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers=STREAM_HEADERS)
