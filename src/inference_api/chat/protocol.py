"""Bodies of the chat routes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from inference_api.chat.types import SESSION_ID_PATTERN, Message
from inference_api.documents.protocol import Source
from inference_api.inference.protocol import GenerationOptions, not_blank


class StartRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    session_id: StrictStr | None = Field(
        default=None, alias="sessionId", pattern=SESSION_ID_PATTERN, description="Your own id; random when absent."
    )
    message: StrictStr | None = Field(default=None, min_length=1, max_length=200_000, description="A first message.")
    system_prompt: StrictStr | None = Field(default=None, max_length=20_000)
    base_model: StrictStr | None = None
    adapter_version: StrictStr | None = None


class SendRequest(GenerationOptions):
    message: StrictStr = Field(min_length=1, max_length=200_000)

    _message_not_blank = field_validator("message")(not_blank)


class BranchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at_message: StrictInt = Field(ge=0, description="How many of the first messages the new session keeps.")


class ChatMessage(BaseModel):
    role: str
    content: str
    timestamp: float
    sources: list[dict[str, Any]] | None = None
    usage: dict[str, Any] | None = None
    response_id: str | None = Field(default=None, description="The reply's id at /v1/responses, if it was made there.")

    @classmethod
    def of(cls, message: Message) -> ChatMessage:
        response_id = message.response.get("id") if message.response else None
        return cls(**message.model_dump(exclude={"response"}), response_id=response_id)


class SessionView(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    session_id: str = Field(alias="sessionId")
    created_at: float
    updated_at: float
    system_prompt: str | None
    base_model: str | None
    adapter_version: str | None
    summary: str | None = Field(description="The model's summary of messages folded away to fit the context.")
    summarized_turns: int = Field(description="How many early messages the summary stands in for.")
    messages: list[ChatMessage]


class SessionListItem(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    session_id: str = Field(alias="sessionId")
    created_at: float
    updated_at: float
    message_count: int
    summarized_turns: int


class SessionList(BaseModel):
    sessions: list[SessionListItem]


class Usage(BaseModel):
    prompt_tokens: int
    tokens_generated: int
    finish_reason: str
    cached: bool = False  # answered from the response cache
    queue_time: float
    generation_time: float
    response_time: float


class ChatReply(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    session_id: str = Field(alias="sessionId")
    message: ChatMessage
    usage: Usage
    sources: list[Source] | None = None
    grounded: bool | None = Field(
        default=None, description="With use_documents: false when the reply does not draw on its sources."
    )
    summarized_turns: int = Field(
        description="Messages folded into the session's summary for this reply, so that the history fits."
    )


class StartResponse(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    session_id: str = Field(alias="sessionId")
    messages: list[ChatMessage]
    reply: ChatReply | None = None


class Deleted(BaseModel):
    deleted: bool
