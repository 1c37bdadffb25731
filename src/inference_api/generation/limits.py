"""The limits every generation is held to: checked, never met by cutting the prompt or the answer."""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from inference_api.engine.types import SamplingParams
from inference_api.errors import ErrorCode, ServiceError
from inference_api.modeling.prompt import EncodedPrompt


def check_token_budget(encoded: EncodedPrompt, max_new_tokens: int, max_input_tokens: int) -> None:
    """Refuse what does not fit, naming the counts; nothing is ever truncated to make it fit."""
    prompt = len(encoded.ids)
    if prompt > max_input_tokens:
        raise ServiceError(
            ErrorCode.TOKEN_LIMIT_EXCEEDED,
            f"the prompt has {prompt} tokens, over MAX_INPUT_TOKENS={max_input_tokens}",
        )
    total = prompt + max_new_tokens
    if total > encoded.context_length:
        raise ServiceError(
            ErrorCode.TOKEN_LIMIT_EXCEEDED,
            f"the prompt has {prompt} tokens and max_new_tokens is {max_new_tokens}: {total} tokens, over "
            f"the model's context of {encoded.context_length}",
        )


def check_max_new_tokens(value: int, limit: int, field: str = "max_new_tokens") -> None:
    if value > limit:
        raise ServiceError.invalid(field, f"must be at most {limit} (MAX_NEW_TOKENS)")


class NewTokensField(Protocol):
    """A request body with a `max_new_tokens` field that has a default (pydantic models are)."""

    max_new_tokens: int

    @property
    def model_fields_set(self) -> set[str]: ...


def default_within_limit(body: NewTokensField, limit: int) -> None:
    """A max_new_tokens the client did not send defaults to at most MAX_NEW_TOKENS: a server configured below the
    default of 128 must not refuse requests that never asked for more (a chat start cannot even send the field)."""
    if "max_new_tokens" not in body.model_fields_set:
        body.max_new_tokens = min(body.max_new_tokens, limit)


def fit_to_context(params: SamplingParams, encoded: EncodedPrompt) -> SamplingParams:
    """Lower max_new_tokens to the room the prompt leaves in the context (for callers that set no maximum)."""
    room = encoded.context_length - len(encoded.ids)
    return replace(params, max_new_tokens=room) if 0 < room < params.max_new_tokens else params
