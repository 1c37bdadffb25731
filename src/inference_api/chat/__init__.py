"""Server-side chat sessions: the store interface, its SQLite and Redis backends, and what they hold."""

from inference_api.chat.store import SessionStore, open_session_store
from inference_api.chat.types import SESSION_ID_PATTERN, Message, Role, Session, SessionExistsError, SessionInfo

__all__ = [
    "SESSION_ID_PATTERN",
    "Message",
    "Role",
    "Session",
    "SessionExistsError",
    "SessionInfo",
    "SessionStore",
    "open_session_store",
]
