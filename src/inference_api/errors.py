"""Error codes of the product (SPEC §5) and the one exception type that carries them.

Services and the engine raise `ServiceError`; only the HTTP layer knows how a code maps to a status.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    TOKEN_LIMIT_EXCEEDED = "TOKEN_LIMIT_EXCEEDED"
    INVALID_GRAMMAR = "INVALID_GRAMMAR"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    DOCUMENT_NOT_FOUND = "DOCUMENT_NOT_FOUND"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    DOCUMENT_PROCESSING_ERROR = "DOCUMENT_PROCESSING_ERROR"
    RATE_LIMITED = "RATE_LIMITED"
    MODEL_NOT_READY = "MODEL_NOT_READY"
    MODEL_LOAD_FAILED = "MODEL_LOAD_FAILED"
    OVERLOADED = "OVERLOADED"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    TIMEOUT = "TIMEOUT"
    CANCELLED = "CANCELLED"
    NOT_CONFIGURED = "NOT_CONFIGURED"
    DEPENDENCY_UNAVAILABLE = "DEPENDENCY_UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.VALIDATION_ERROR: 422,
    ErrorCode.TOKEN_LIMIT_EXCEEDED: 400,
    # A response_format, guided_* or tool schema the grammar engine cannot compile (refused before queueing).
    ErrorCode.INVALID_GRAMMAR: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.MODEL_NOT_FOUND: 404,
    ErrorCode.SESSION_NOT_FOUND: 404,
    ErrorCode.DOCUMENT_NOT_FOUND: 404,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.DOCUMENT_PROCESSING_ERROR: 400,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.MODEL_NOT_READY: 503,
    ErrorCode.MODEL_LOAD_FAILED: 503,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.OUT_OF_MEMORY: 503,
    ErrorCode.TIMEOUT: 504,
    # 499 is the de-facto "client closed request"; the client is gone, so it is only ever logged.
    ErrorCode.CANCELLED: 499,
    # A feature this server was not set up for (POST /auth/token without a JWT secret or key pair).
    ErrorCode.NOT_CONFIGURED: 501,
    # A store the route cannot work without (Redis for sessions) is unreachable; other routes keep serving.
    ErrorCode.DEPENDENCY_UNAVAILABLE: 503,
    ErrorCode.INTERNAL_ERROR: 500,
}


class ServiceError(Exception):
    """A failure the client should hear about, with a product error code and a safe message."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        retry_after: int | None = None,
        details: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.details = details

    @classmethod
    def invalid(cls, field: str, message: str) -> ServiceError:
        """A VALIDATION_ERROR about one field, named in the message and in `details` alike."""
        return cls(ErrorCode.VALIDATION_ERROR, f"{field}: {message}", details=[{"field": field, "message": message}])

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.code]
