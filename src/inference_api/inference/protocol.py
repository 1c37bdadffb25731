"""Request and response bodies of POST /infer."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

StopString = Annotated[StrictStr, Field(min_length=1, max_length=64)]


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: StrictStr = Field(min_length=1, max_length=200_000, description="The user's prompt.")
    max_new_tokens: StrictInt = Field(default=128, gt=0, description="Upper bound on generated tokens.")
    base_model: StrictStr | None = Field(default=None, description="Base model; the default when absent.")
    adapter_version: StrictStr | None = Field(default=None, description="Adapter version of the base model.")
    temperature: float = Field(default=1.0, ge=0.0, le=10.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: StrictInt = Field(default=0, ge=0)
    do_sample: StrictBool = False
    num_beams: StrictInt = Field(default=1, ge=1, le=8)
    stop: list[StopString] | StopString | None = Field(default=None, description="Up to 4 stop strings.")
    seed: StrictInt | None = Field(default=None, ge=0, le=2**63 - 1)
    stream: StrictBool = False
    raw: StrictBool = Field(default=False, description="Send the prompt as-is, without the chat template.")

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: list[str] | str | None) -> list[str] | str | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop strings")
        return value

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class InferMetadata(BaseModel):
    model: str
    version: str
    tokens_generated: int
    prompt_tokens: int
    finish_reason: Literal["stop", "length"]
    queue_time: float = Field(description="Seconds waiting for a worker.")
    generation_time: float = Field(description="Seconds from the worker taking it to the last token.")
    response_time: float = Field(description="Seconds from arrival to the answer.")


class InferResponse(BaseModel):
    result: str
    metadata: InferMetadata
