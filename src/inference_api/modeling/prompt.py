"""Turning a request's prompt or conversation into token ids with the model's own chat template."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference_api.errors import ErrorCode, ServiceError
from inference_api.modeling.loader import context_length_of, load_tokenizer, weights_location
from inference_api.modeling.registry import ModelRegistry

Message = dict[str, str]


@dataclass(frozen=True)
class EncodedPrompt:
    ids: list[int]
    context_length: int
    shared_prefix: int = 0  # leading ids that every prompt with the same system messages begins with


@dataclass
class _Tokenizing:
    tokenizer: Any
    context_length: int
    vocab_size: int  # the width of the model's logits (can be more than the tokenizer's tokens)


class PromptEncoder:
    """Per base model: its tokenizer and context length, loaded once; encoding is blocking work."""

    def __init__(self, registry: ModelRegistry, data_dir: Path) -> None:
        self._registry = registry
        self._data_dir = data_dir
        self._loaded: dict[str, _Tokenizing] = {}
        self._lock = threading.Lock()

    def encode_chat(self, base: str, messages: list[Message]) -> EncodedPrompt:
        """Apply the model's chat template (with the generation prompt); raw text for template-less models."""
        entry = self._get(base)
        tokenizer = entry.tokenizer
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            # The template already holds the special tokens it wants (BOS included, if any).
            ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
            # Shared prefixes are this process's KV cache; an upstream model's prefix cache is the upstream's own.
            local = self._registry.get(base).source.kind != "upstream"
            shared = _system_block(tokenizer, messages, text, ids) if local else 0
            return EncodedPrompt(ids, entry.context_length, shared)
        text = "\n".join(m["content"] for m in messages)
        return EncodedPrompt(list(tokenizer(text)["input_ids"]), entry.context_length)

    def encode_raw(self, base: str, text: str) -> EncodedPrompt:
        entry = self._get(base)
        return EncodedPrompt(list(entry.tokenizer(text)["input_ids"]), entry.context_length)

    def tokenizer(self, base: str) -> tuple[Any, int]:
        """The base model's tokenizer and the width of its logits (blocking on first use)."""
        entry = self._get(base)
        return entry.tokenizer, entry.vocab_size

    def from_ids(self, base: str, ids: list[int]) -> EncodedPrompt:
        """A prompt given as token ids (the OpenAI completions' `prompt: [ids]`), held to the model's context."""
        entry = self._get(base)
        outside = next((i for i in ids if not 0 <= i < entry.vocab_size), None)
        if outside is not None:
            raise ServiceError.invalid("prompt", f"token id {outside} is not in the model's vocabulary")
        return EncodedPrompt(list(ids), entry.context_length)

    def encodes_here(self, base: str) -> bool:
        """Whether `base`'s prompts are encoded in this process (False: an upstream model without a tokenizer
        folder, encoded by its upstream's /tokenize)."""
        spec = self._registry.get(base)
        return spec.source.kind != "upstream" or bool(spec.source.location)

    def _get(self, base: str) -> _Tokenizing:
        with self._lock:
            entry = self._loaded.get(base)
            if entry is None:
                from transformers import AutoConfig

                spec = self._registry.get(base)
                if not self.encodes_here(base):
                    raise ServiceError(
                        ErrorCode.VALIDATION_ERROR,
                        f"model {base!r} is encoded by its upstream (no tokenizer folder is configured for it here)",
                    )
                location = weights_location(spec, self._data_dir)
                config = AutoConfig.from_pretrained(location)
                tokenizer = load_tokenizer(location)
                vocab = getattr(config, "vocab_size", None) or len(tokenizer)
                entry = _Tokenizing(tokenizer, context_length_of(config), int(vocab))
                self._loaded[base] = entry
            return entry


_PROBE = "inference-api-probe-7f3a9c"


def _system_block(tokenizer: Any, messages: list[Message], text: str, ids: list[int]) -> int:
    """How many leading ids hold the template's text before the first non-system message's content.

    Every prompt with the same system messages (or none, and the template's default) begins with them.
    The template is rendered once more with a probe in place of that content; 0 when the prompt does not
    begin with that text, or its tokens do not end where the content starts.
    """
    system = 0
    while system < len(messages) and messages[system]["role"] == "system":
        system += 1
    if system == len(messages):
        return 0
    probe = [*messages[:system], {"role": messages[system]["role"], "content": _PROBE}]
    try:
        rendered = tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:  # a template may refuse a conversation cut short; sharing is only an optimisation
        return 0
    cut = rendered.find(_PROBE)
    if cut <= 0 or not text.startswith(rendered[:cut]):
        return 0
    prefix = list(tokenizer(rendered[:cut], add_special_tokens=False)["input_ids"])
    if ids[: len(prefix)] != prefix or len(prefix) >= len(ids):
        return 0
    return len(prefix)
