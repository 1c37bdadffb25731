"""What one HTTP request did, gathered while it runs, for its access log line and its HTTP metrics.

The observability middleware opens a record per request and puts it in a context variable, so the
places that learn something (the engine's request, the error envelope) add to it without an HTTP
object in hand; tasks and streaming generators started by the request inherit the variable.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from inference_api.errors import ErrorCode

# Route prefixes and the domain their generations count under in successful_inferences_total.
DOMAINS = (("/infer", "infer"), ("/chat", "chat"), ("/v1", "openai"))


@dataclass
class RequestRecord:
    scope: MutableMapping[str, Any] = field(repr=False)
    on_error: Callable[[ErrorCode], None] | None = field(default=None, repr=False)
    model: str = ""
    version: str = ""
    prompt_tokens: int = 0
    tokens_generated: int = 0
    queue_time: float | None = None
    generation_time: float | None = None
    error_code: str | None = None

    @property
    def route(self) -> str:
        """The route template (`/chat/{session_id}/messages`), or `unmatched`: never the raw path."""
        route = self.scope.get("route")
        path = getattr(route, "path", None)
        return path if isinstance(path, str) and path else "unmatched"

    @property
    def domain(self) -> str:
        route = self.route
        return next((name for prefix, name in DOMAINS if route.startswith(prefix)), "other")

    def note_model(self, model: str, version: str) -> None:
        self.model, self.version = model, version

    def note_generation(self, prompt_tokens: int, tokens_generated: int, queue: float, generation: float) -> None:
        """Add one finished generation (a chat turn that folds its history runs more than one)."""
        self.prompt_tokens += prompt_tokens
        self.tokens_generated += tokens_generated
        self.queue_time = (self.queue_time or 0.0) + queue
        self.generation_time = (self.generation_time or 0.0) + generation

    def note_error(self, code: ErrorCode) -> None:
        self.error_code = code.value
        if self.on_error is not None:
            self.on_error(code)


current_record: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar("request_record", default=None)


def note_error(code: ErrorCode) -> None:
    """Count an error envelope against the request being served (outside a request there is none)."""
    record = current_record.get()
    if record is not None:
        record.note_error(code)
