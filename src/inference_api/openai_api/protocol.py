"""Request and response bodies of the OpenAI-compatible routes, in OpenAI's own field names and shapes.

Requests accept fields this service does not know (clients send newer OpenAI fields such as `store` or
`metadata`) and ignore them; fields it knows but cannot honour are refused with a 400 that names them, so
nothing asked for is silently dropped.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator, model_validator

from inference_api.documents.protocol import GROUNDED_DESCRIPTION, Source
from inference_api.engine.grammar import GrammarSpec
from inference_api.engine.types import SamplingParams
from inference_api.generation.protocol import ResponseFormat
from inference_api.inference.protocol import StopString, few_stops
from inference_api.openai_api.tools import NamedToolChoice, Tool, ToolCall, ToolChoice, ToolPlan, plan

FinishReason = Literal["stop", "length", "tool_calls", "grammar_error"]
_CONSTRAINTS = (
    "response_format",
    "structured_outputs",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
)


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class StructuredOutputs(BaseModel):
    """vLLM's current field for constrained output (it replaced the `guided_*` ones): exactly one constraint."""

    model_config = ConfigDict(extra="forbid")

    json_: dict[str, Any] | StrictStr | None = Field(default=None, alias="json")
    regex: StrictStr | None = Field(default=None, max_length=100_000)
    choice: list[StrictStr] | None = Field(default=None, min_length=1, max_length=1000)
    grammar: StrictStr | None = Field(default=None, max_length=100_000)
    json_object: StrictBool | None = None

    @model_validator(mode="after")
    def _one(self) -> StructuredOutputs:
        given = [
            v for v in (self.json_, self.regex, self.choice, self.grammar, self.json_object or None) if v is not None
        ]
        if len(given) != 1:
            raise ValueError("structured_outputs takes exactly one of json, regex, choice, grammar or json_object")
        return self

    def spec(self) -> GrammarSpec:
        if self.json_ is not None:
            return GrammarSpec.json_schema(self.json_)
        if self.regex is not None:
            return GrammarSpec("regex", self.regex)
        if self.choice is not None:
            return GrammarSpec.choice(self.choice)
        if self.grammar is not None:
            return GrammarSpec("grammar", self.grammar)
        return GrammarSpec("json_object")


class TextPart(BaseModel):
    type: Literal["text"]
    text: StrictStr


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCall] | None = Field(default=None, max_length=128)
    tool_call_id: StrictStr | None = None

    @model_validator(mode="after")
    def _has_text(self) -> ChatMessageIn:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (an assistant message may have tool_calls instead)")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs its tool_call_id")
        return self

    def text(self) -> str:
        """The message as plain text: an assistant's calls as the JSON it would write, a tool's result with its call."""
        content = self.content
        text = content if isinstance(content, str) else "".join(part.text for part in content or [])
        if self.tool_calls:
            calls = [{"name": c.function.name, "arguments": _loads(c.function.arguments)} for c in self.tool_calls]
            text = (text + "\n" if text else "") + json.dumps(calls[0] if len(calls) == 1 else calls)
        return text

    def template_role(self) -> str:
        # OpenAI's newer name for the system role; chat templates know only `system`.
        return "system" if self.role == "developer" else self.role


class GenerationFields(BaseModel):
    """What both completion routes take: the model and how to sample."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr = Field(min_length=1, max_length=300, description="`base` or `base:version` (an adapter).")
    max_tokens: StrictInt | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: StrictInt | None = Field(default=None, ge=1, le=16, description="Choices, each sampled on its own.")
    stop: list[StopString] | StopString | None = None
    seed: StrictInt | None = Field(default=None, ge=0, le=2**63 - 1)
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = Field(default=None, max_length=256, description="Accepted; the key names the caller.")
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = Field(default=None, max_length=300)
    repetition_penalty: float | None = Field(
        default=None, gt=0.0, le=10.0, description="Extension (transformers' semantics, over prompt and output)."
    )
    min_tokens: StrictInt | None = Field(default=None, ge=0, description="Extension: no end before this many tokens.")
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    # vLLM's names for constrained output, as its clients send them (older ones, then `structured_outputs`).
    guided_json: dict[str, Any] | StrictStr | None = None
    guided_regex: StrictStr | None = Field(default=None, max_length=100_000)
    guided_choice: list[StrictStr] | None = Field(default=None, min_length=1, max_length=1000)
    guided_grammar: StrictStr | None = Field(default=None, max_length=100_000)
    close_within_budget: StrictBool = Field(
        default=True,
        description="Extension: with a JSON constraint, close the JSON before max_tokens runs out (see README).",
    )

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: list[str] | str | None) -> list[str] | str | None:
        return few_stops(value)

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not key.isdigit():
                raise ValueError(f"logit_bias keys are token ids, not {key[:40]!r}")
        return value

    @model_validator(mode="after")
    def _one_constraint(self) -> GenerationFields:
        given = [name for name in _CONSTRAINTS if getattr(self, name) is not None]
        if self.response_format is not None and self.response_format.type == "text":
            given.remove("response_format")
        if len(given) > 1:
            raise ValueError(f"give one output constraint, not {' and '.join(given)}")
        return self

    def grammar(self) -> GrammarSpec | None:
        """What the output must match, from whichever constraint was given."""
        if self.response_format is not None:
            return self.response_format.spec()
        if self.structured_outputs is not None:
            return self.structured_outputs.spec()
        if self.guided_json is not None:
            return GrammarSpec.json_schema(self.guided_json)
        if self.guided_regex is not None:
            return GrammarSpec("regex", self.guided_regex)
        if self.guided_choice is not None:
            return GrammarSpec.choice(self.guided_choice)
        if self.guided_grammar is not None:
            return GrammarSpec("grammar", self.guided_grammar)
        return None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def logprob_count(self) -> int | None:
        """None: no log-probabilities; k: the chosen tokens' with the k likeliest alternatives."""
        return None

    def sampling(self, max_new_tokens: int) -> SamplingParams:
        # OpenAI samples unless told temperature 0; its default temperature is 1.
        temperature = 1.0 if self.temperature is None else self.temperature
        stop = () if self.stop is None else (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        return SamplingParams(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            do_sample=temperature > 0.0,
            stop=stop,
            seed=self.seed,
            close_within_budget=self.close_within_budget,
            logprobs=self.logprob_count(),
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            logit_bias=tuple(sorted((int(token), bias) for token, bias in (self.logit_bias or {}).items())),
            min_tokens=min(self.min_tokens or 0, max_new_tokens),
        )


class ChatCompletionRequest(GenerationFields):
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=1000)
    max_completion_tokens: StrictInt | None = Field(default=None, gt=0)
    use_documents: StrictBool = Field(
        default=False, description="Extension: answer from the caller's uploaded documents; `sources` come back."
    )
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool = True
    functions: list[Any] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)

    @field_validator("functions")
    @classmethod
    def _no_functions(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("the deprecated functions are not supported; use tools")
        return value

    @model_validator(mode="after")
    def _tools_fit(self) -> ChatCompletionRequest:
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            raise ValueError("tool_choice needs tools")
        named = self.tool_choice.function.name if isinstance(self.tool_choice, NamedToolChoice) else None
        if named is not None and named not in {t.function.name for t in self.tools or []}:
            raise ValueError(f"tool_choice names {named!r}, which is not in tools")
        if self.tool_plan_grammar() is not None and super().grammar() is not None:
            raise ValueError("give one output constraint, not tools and a response format")
        return self

    def tool_plan(self) -> ToolPlan | None:
        return plan(self.tools, self.tool_choice, self.parallel_tool_calls)

    def tool_plan_grammar(self) -> GrammarSpec | None:
        tools = self.tool_plan()
        return tools.grammar() if tools is not None else None

    def grammar(self) -> GrammarSpec | None:
        return self.tool_plan_grammar() or super().grammar()

    @model_validator(mode="after")
    def _asks_something(self) -> ChatCompletionRequest:
        if not any(m.role == "user" and m.text().strip() for m in self.messages):
            raise ValueError("messages need at least one user message with text")
        return self

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def requested_max_tokens(self) -> int | None:
        # max_completion_tokens is OpenAI's newer name; it wins when both are sent.
        return self.max_completion_tokens or self.max_tokens

    def logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


Prompt = Annotated[StrictStr, Field(min_length=1, max_length=200_000)]


TokenIds = Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1, max_length=200_000)]


class CompletionRequest(GenerationFields):
    # Text, or token ids (as vLLM takes them: a gateway that encoded the prompt itself sends them as they are).
    prompt: Prompt | Annotated[list[Prompt], Field(min_length=1, max_length=1)] | TokenIds
    echo: StrictBool | None = None
    suffix: StrictStr | None = None
    best_of: StrictInt | None = None
    use_documents: StrictBool | None = None
    logprobs: StrictInt | None = Field(default=None, ge=0, le=20)

    def logprob_count(self) -> int | None:
        return self.logprobs

    @field_validator("echo", "use_documents")
    @classmethod
    def _not_set(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("not supported on completions (use_documents works on chat completions)")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("suffix is not supported")
        return value

    @field_validator("best_of")
    @classmethod
    def _best_of_one(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only best_of=1 is supported")
        return value

    def text(self) -> str | list[int]:
        """The prompt's text, or its token ids."""
        if isinstance(self.prompt, str):
            return self.prompt
        first = self.prompt[0]
        return first if isinstance(first, str) else [int(t) for t in self.prompt]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChatLogprobs | None = None
    grounded: bool | None = Field(default=None, description=f"Extension. {GROUNDED_DESCRIPTION}")


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    sources: list[Source] | None = Field(default=None, description="Extension: present when use_documents was set.")


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelCardList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: Prompt


class TokenizeRequest(BaseModel):
    """vLLM's `POST /tokenize`: a prompt, or messages put into the model's chat template."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = None
    prompt: Prompt | None = None
    messages: list[TokenizeMessage] | None = Field(default=None, min_length=1, max_length=1000)
    add_generation_prompt: StrictBool = True
    add_special_tokens: StrictBool = True

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        if self.messages is not None and not self.add_generation_prompt:
            raise ValueError("add_generation_prompt=false is not supported")
        if self.prompt is not None and not self.add_special_tokens:
            raise ValueError("add_special_tokens=false is not supported")
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: StrictStr = Field(min_length=1, max_length=300)
    input: StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=2048)] = Field(
        description="A text or a list of texts (token arrays are not supported)."
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(default=None, gt=0)
    user: StrictStr | None = Field(default=None, max_length=256)

    @field_validator("input")
    @classmethod
    def _no_empty_text(cls, value: str | list[str]) -> str | list[str]:
        texts = [value] if isinstance(value, str) else value
        if any(not text for text in texts):
            raise ValueError("input texts must not be empty")
        return value

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="Floats, or little-endian float32 bytes in base64.")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
