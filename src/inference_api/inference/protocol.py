"""Request and response bodies of POST /infer."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from inference_api.documents.protocol import Source
from inference_api.engine.grammar import GrammarSpec
from inference_api.engine.types import SamplingParams
from inference_api.generation.protocol import ResponseFormat

StopString = Annotated[StrictStr, Field(min_length=1, max_length=64)]


def few_stops(value: list[str] | str | None) -> list[str] | str | None:
    """Stop strings are checked after every token: four at most, as OpenAI allows."""
    if isinstance(value, list) and len(value) > 4:
        raise ValueError("at most 4 stop strings")
    return value


class GenerationOptions(BaseModel):
    """How to generate (sampling, the new-token budget) and answer (streamed, from the caller's documents):
    shared by /infer and chat messages."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: StrictInt = Field(default=128, gt=0, description="Upper bound on generated tokens.")
    temperature: float = Field(default=1.0, ge=0.0, le=10.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: StrictInt = Field(default=0, ge=0)
    do_sample: StrictBool = False
    num_beams: StrictInt = Field(default=1, ge=1, le=8)
    stop: list[StopString] | StopString | None = Field(default=None, description="Up to 4 stop strings.")
    seed: StrictInt | None = Field(default=None, ge=0, le=2**63 - 1)
    stream: StrictBool = False
    use_documents: StrictBool = Field(default=False, description="Answer from the caller's uploaded documents.")
    response_format: ResponseFormat | None = Field(
        default=None, description="What the answer must match: json_object, json_schema, regex, choice, grammar."
    )
    close_within_budget: StrictBool = Field(
        default=True, description="With a JSON constraint, close the JSON before max_new_tokens runs out."
    )

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: list[str] | str | None) -> list[str] | str | None:
        return few_stops(value)

    def sampling(self) -> SamplingParams:
        stop = () if self.stop is None else (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        return SamplingParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            do_sample=self.do_sample,
            num_beams=self.num_beams,
            stop=stop,
            seed=self.seed,
            close_within_budget=self.close_within_budget,
        )

    def grammar(self) -> GrammarSpec | None:
        return self.response_format.spec() if self.response_format is not None else None


def not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


class InferRequest(GenerationOptions):
    prompt: StrictStr = Field(min_length=1, max_length=200_000, description="The user's prompt.")
    base_model: StrictStr | None = Field(default=None, description="Base model; the default when absent.")
    adapter_version: StrictStr | None = Field(default=None, description="Adapter version of the base model.")
    raw: StrictBool = Field(default=False, description="Send the prompt as-is, without the chat template.")

    _prompt_not_blank = field_validator("prompt")(not_blank)


class InferMetadata(BaseModel):
    model: str
    version: str
    tokens_generated: int
    prompt_tokens: int
    finish_reason: Literal["stop", "length", "grammar_error"]
    cached: bool = Field(default=False, description="Answered from the response cache (RESPONSE_CACHE_MB).")
    queue_time: float = Field(description="Seconds waiting for a worker.")
    generation_time: float = Field(description="Seconds from the worker taking it to the last token.")
    response_time: float = Field(description="Seconds from arrival to the answer.")


class InferResponse(BaseModel):
    result: str
    metadata: InferMetadata
    sources: list[Source] | None = Field(default=None, description="Present when use_documents was set.")
    grounded: bool | None = Field(
        default=None,
        description="With use_documents: false when the answer does not draw on its sources (no term of it beyond "
        "the question's is in them, or it states a number they do not hold); null when nothing was found.",
    )
