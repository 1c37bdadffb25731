"""Bodies of /v1/responses, in the field names and shapes of OpenAI's Responses API.

Requests accept fields this service does not know (newer SDKs send more) and ignore them; fields it knows but
cannot honour yet (tools, structured output, background runs, conversations) are refused with a 400 naming them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator, model_validator

from inference_api.documents.protocol import GROUNDED_DESCRIPTION, Source

NOT_YET = "is not supported yet (tools and structured output come with the pipeline's grammar support)"

Text = Annotated[StrictStr, Field(max_length=200_000)]


class ContentPart(BaseModel):
    """A text part of an input message (`input_text`; an earlier answer's `output_text`)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["input_text", "output_text", "text"]
    text: Text


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Text | list[ContentPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ResponseRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = Field(
        default=None, min_length=1, max_length=300, description="`base` or `base:version`; the default when absent."
    )
    input: Annotated[Text, Field(min_length=1)] | Annotated[list[InputMessage], Field(min_length=1, max_length=1000)]
    instructions: StrictStr | None = Field(default=None, max_length=20_000)
    max_output_tokens: StrictInt | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: StrictInt | None = Field(default=None, ge=0, le=2**63 - 1, description="Extension: repeatable sampling.")
    stream: StrictBool | None = False
    store: StrictBool | None = True
    previous_response_id: StrictStr | None = Field(default=None, max_length=300)
    metadata: dict[StrictStr, StrictStr] | None = Field(default=None, max_length=16)
    user: StrictStr | None = Field(default=None, max_length=256)
    use_documents: StrictBool = Field(
        default=False, description="Extension: answer from the caller's uploaded documents; `sources` come back."
    )
    tools: list[Any] | None = None
    tool_choice: Any = None
    text: dict[str, Any] | None = None
    background: StrictBool | None = None
    conversation: Any = None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError(f"tools {NOT_YET}")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _no_tool_choice(cls, value: Any) -> Any:
        if value not in (None, "none", "auto"):
            raise ValueError(f"tool_choice {NOT_YET}")
        return value

    @field_validator("text")
    @classmethod
    def _plain_text(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        form = (value or {}).get("format") or {}
        if isinstance(form, dict) and form.get("type", "text") != "text":
            raise ValueError(f"structured output (text.format {form.get('type')!r}) {NOT_YET}")
        return value

    @field_validator("background")
    @classmethod
    def _not_background(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("background responses are not supported")
        return value

    @field_validator("conversation")
    @classmethod
    def _no_conversation(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError("conversations are not supported: continue with previous_response_id")
        return value

    @model_validator(mode="after")
    def _ends_with_a_question(self) -> ResponseRequest:
        if isinstance(self.input, list):
            last = self.input[-1]
            if last.role != "user" or not last.text().strip():
                raise ValueError("the last input item must be a user message with text")
        elif not self.input.strip():
            raise ValueError("input must not be blank")
        return self

    def question(self) -> str:
        """The user message this response answers: the input text, or the last input item."""
        return self.input if isinstance(self.input, str) else self.input[-1].text()

    def history(self) -> list[InputMessage]:
        """Input items before the question."""
        return [] if isinstance(self.input, str) else self.input[:-1]


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseObject(BaseModel):
    """OpenAI's Response object, with this service's extensions `cached`, `sources` and `session_id`."""

    id: str
    object: Literal["response"] = "response"
    created_at: float
    completed_at: float | None = None
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: dict[str, Any] | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputMessage] = Field(default_factory=list)
    parallel_tool_calls: bool = False
    previous_response_id: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    tool_choice: str = "none"
    tools: list[Any] = Field(default_factory=list)
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    truncation: Literal["disabled"] = "disabled"
    store: bool = True
    metadata: dict[str, str] = Field(default_factory=dict)
    user: str | None = None
    usage: ResponseUsage | None = None
    cached: bool = Field(default=False, description="Extension: answered from the response cache.")
    sources: list[Source] | None = Field(default=None, description="Extension: present when use_documents was set.")
    grounded: bool | None = Field(default=None, description=f"Extension. {GROUNDED_DESCRIPTION}")
    session_id: str | None = Field(default=None, description="Extension: the chat session holding this turn.")


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: bool = True
