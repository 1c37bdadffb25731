"""Constrained decoding: a row's grammar masks its logits before sampling and advances with each chosen token.

The engine is llguidance (the one llama.cpp, vLLM and SGLang also use): a Rust library with no Python
dependencies that computes a token mask in tens of microseconds. xgrammar, the other well-kept engine, requires
triton on Linux (hundreds of MB, GPU-oriented) and its torch helpers compile kernels; neither fits a CPU service
that installs from a lock. Masks are applied here with numpy, not with llguidance's torch helper, which
`torch.compile`s its kernel (seconds of cold compile on the CPU).

Closing within the budget: a grammar keeps a small model valid but not brief, and it can wander inside an open
string or list until `max_tokens` cuts the JSON. So once the tokens left come near what it takes to close what is
open (measured by following the cheapest token at each step to an accepting state, on a copy of the matcher),
only the token that starts that path is allowed, and the answer ends valid with finish_reason "stop". A request
can turn this off (`SamplingParams.close_within_budget`).
"""

from __future__ import annotations

import copy
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import llguidance
import numpy as np
import torch

from inference_api.errors import ErrorCode, ServiceError

GrammarKind = Literal["json_schema", "json_object", "regex", "choice", "grammar"]
# Start measuring the way to close when this few tokens are left (a longer closing path cannot be saved by it).
_CLOSING_WINDOW = 96
# Tokens kept in hand beyond the measured closing path.
_CLOSING_MARGIN = 2
# Steps between two measurements of the closing path while the budget is still well beyond it.
_REMEASURE_EVERY = 6
# How far beyond the last measured closing path the budget counts as near: every token is then vetted.
_NEAR = 24
_CLOSERS = frozenset("}]")
_SEPARATORS = frozenset(",:")
_AFTER_A_STRING = _CLOSERS | _SEPARATORS
_EMPTY_VALUES = frozenset({"[]", "{}", '""', "[]}", "[]]", "{}}", "{}]"})
_CLOSE_RANK, _EMPTY_RANK, _SEPARATOR_RANK, _TEXT_RANK = 100, 50, 20, 9
_VALIDATED_GRAMMARS = 256  # compiled grammars remembered per tokenizer


@dataclass(frozen=True)
class GrammarSpec:
    """What a request's output must match, as the client gave it; `source` is JSON text for schemas and choices."""

    kind: GrammarKind
    source: str = ""

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | str) -> GrammarSpec:
        return cls("json_schema", schema if isinstance(schema, str) else json.dumps(schema))

    @classmethod
    def choice(cls, choices: Sequence[str]) -> GrammarSpec:
        return cls("choice", json.dumps(list(choices)))

    @property
    def is_json(self) -> bool:
        return self.kind in ("json_schema", "json_object")

    def llguidance_grammar(self) -> str:
        """The grammar in llguidance's own form; a malformed one is refused when it is validated."""
        if self.kind == "json_object":
            return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"})
        if self.kind == "json_schema":
            return llguidance.LLMatcher.grammar_from_json_schema(self.source, defaults={"whitespace_flexible": False})
        if self.kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(self.source)
        if self.kind == "choice":
            choices = json.loads(self.source)
            return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in choices))
        lark = self.source
        if "::=" in lark:  # GBNF (llama.cpp's, xgrammar's EBNF): llguidance converts it to Lark
            from llguidance.gbnf_to_lark import gbnf_to_lark

            lark = gbnf_to_lark(lark)
        return llguidance.LLMatcher.grammar_from_lark(lark)


class TokenTable:
    """A tokenizer as llguidance sees it, and each token's rank as a step toward closing a JSON value, inside a
    string and outside one: closing what is open first, then a whole empty value (`[]`, `""`), then a separator
    (a number ends at the `,` after it), then adding text (forced keys and enum values go fastest that way)."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int) -> None:
        import llguidance.hf

        self.vocab_size = vocab_size
        self.tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size)
        self.texts: list[str] = [""] * vocab_size
        self.rank_in_string = np.zeros(vocab_size, dtype=np.int16)
        self.rank_in_structure = np.zeros(vocab_size, dtype=np.int16)
        special = set(getattr(hf_tokenizer, "all_special_ids", []))
        for token in range(min(vocab_size, len(hf_tokenizer))):
            if token in special:
                continue
            text = hf_tokenizer.decode([token])
            self.texts[token] = text
            adds = min(len(text.strip()), _TEXT_RANK)
            if text.startswith('"') and set(text[1:]) <= _AFTER_A_STRING:
                # What it closes counts; a separator after it opens the next item, so it counts against.
                closes = sum(char in _CLOSERS for char in text[1:])
                self.rank_in_string[token] = _CLOSE_RANK + 2 * closes - (len(text) - 1 - closes)
            else:
                self.rank_in_string[token] = adds
            if text and set(text) <= _CLOSERS:
                self.rank_in_structure[token] = _CLOSE_RANK + len(text)
            elif text in _EMPTY_VALUES:
                self.rank_in_structure[token] = _EMPTY_RANK
            elif text and set(text) <= _SEPARATORS:
                self.rank_in_structure[token] = _SEPARATOR_RANK
            else:
                self.rank_in_structure[token] = adds
        self._validated: OrderedDict[GrammarSpec, str] = OrderedDict()
        self._lock = threading.Lock()

    def grammar(self, spec: GrammarSpec) -> str:
        """The spec's grammar, validated against this tokenizer (remembered: clients repeat their schemas)."""
        with self._lock:
            known = self._validated.get(spec)
            if known is not None:
                self._validated.move_to_end(spec)
                return known
        try:
            grammar = spec.llguidance_grammar()
        except (ValueError, TypeError) as exc:
            raise _invalid(spec, str(exc)) from None
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer)
        if failed:
            raise _invalid(spec, messages[0] if messages else "the grammar is not valid")
        with self._lock:
            self._validated[spec] = grammar
            while len(self._validated) > _VALIDATED_GRAMMARS:
                self._validated.popitem(last=False)
        return grammar

    def allowed(self, bitmask: bytes) -> np.ndarray:
        """llguidance's bitmask (32 tokens a word, low bit first) as one bool per token."""
        bits = np.unpackbits(np.frombuffer(bitmask, dtype=np.uint8), bitorder="little")
        return bits[: self.vocab_size].astype(bool)


class RowGrammar:
    """One row's matcher: what may come next, and the token that came."""

    def __init__(self, table: TokenTable, spec: GrammarSpec, *, close_within_budget: bool = True) -> None:
        self.table = table
        self.spec = spec  # what it enforces (part of a response-cache key)
        self.matcher = llguidance.LLMatcher(table.tokenizer, table.grammar(spec), log_level=0)
        # Closing is measured on JSON (schemas, json_object, tool calls): regexes and grammars end as they say.
        self.close_within_budget = close_within_budget and spec.is_json
        self.scanner = JsonScanner()
        # Measuring the way to close costs a matcher walk, so it is done only when it may matter: every few steps
        # inside the window, every step when the budget comes near it; once closing, the path is followed.
        self._closing: list[int] = []
        self._estimate: int | None = None
        self._measured_at: int | None = None
        self._fallback: list[int] | None = None  # this step's way to close, when measured: what `vet` falls back on
        if self.matcher.is_error():
            raise ServiceError(ErrorCode.INVALID_GRAMMAR, f"response_format: {self.matcher.get_error()}")

    def copy(self) -> RowGrammar:
        """An independent matcher in the same state (each of `n` choices decodes on its own)."""
        twin = copy.copy(self)
        twin.matcher, twin.scanner = self.matcher.deep_copy(), self.scanner.copy()
        twin._closing, twin._fallback = list(self._closing), None
        return twin

    def mask(self, remaining: int, eos: frozenset[int]) -> torch.Tensor | None:
        """The tokens allowed next, as a bool tensor over the vocabulary, given `remaining` tokens of budget;
        None when nothing may come (the matcher failed): the row ends with finish_reason "grammar_error"."""
        if self.matcher.is_error():
            return None
        accepting = self.matcher.is_accepting()
        closing = None if accepting else self._closing_token(remaining)
        if closing is not None:
            allowed = np.zeros(self.table.vocab_size, dtype=bool)
            allowed[closing] = True
        else:
            allowed = self.table.allowed(self.matcher.compute_bitmask())
        if accepting:
            for token in eos:
                if token < allowed.shape[0]:
                    allowed[token] = True
        return torch.from_numpy(allowed) if allowed.any() else None

    def _closing_token(self, remaining: int) -> int | None:
        """The next token of the way to close, once the budget left is no more than it takes (plus a margin)."""
        self._fallback = None
        if not self.close_within_budget or remaining > _CLOSING_WINDOW:
            return None
        if not self._closing:
            due = self._measured_at is None or self._measured_at - remaining >= _REMEASURE_EVERY
            near = self._estimate is not None and remaining <= self._estimate + _CLOSING_MARGIN + _NEAR
            if due or near:
                path = _closing_path(self.matcher.deep_copy(), self.scanner.copy(), self.table, remaining)
                self._estimate, self._measured_at = (len(path) if path is not None else None), remaining
                if path is not None and len(path) + _CLOSING_MARGIN >= remaining:
                    self._closing = path
                elif near and path:
                    self._fallback = path
        return self._closing[0] if self._closing else None

    def vet(self, token: int, remaining: int) -> int:
        """The sampled token, unless (near the end of the budget) taking it would leave no way to close in what is
        left: one token can open a whole object of required keys. Then the way to close starts instead."""
        fallback, self._fallback = self._fallback, None
        if fallback is None or token == fallback[0]:
            return token
        probe, scanner = self.matcher.deep_copy(), self.scanner.copy()
        if probe.consume_token(token) and not probe.is_error():
            scanner.feed(self.table.texts[token])
            after = _closing_path(probe, scanner, self.table, remaining - 1)
            if after is not None and len(after) + _CLOSING_MARGIN < remaining - 1:
                self._estimate = len(after)
                return token
        self._closing = fallback
        return fallback[0]

    def accept(self, token: int) -> bool:
        """Advance with the chosen token; False once the grammar rejected it (the row ends, the batch goes on)."""
        if self._closing:
            self._closing = self._closing[1:] if token == self._closing[0] else []
        self.scanner.feed(self.table.texts[token])
        return bool(self.matcher.consume_token(token)) and not self.matcher.is_error()


def _closing_path(probe: Any, scanner: JsonScanner, table: TokenTable, limit: int) -> list[int] | None:
    """Tokens from the probe's state to an accepting one, each the best-ranked step toward closing (`TokenTable`);
    the probe (a copy of a row's matcher) and the scanner are used up. None: none within `limit`."""
    path: list[int] = []
    while not probe.is_accepting():
        if len(path) >= limit:
            return None
        candidates = np.flatnonzero(table.allowed(probe.compute_bitmask()))
        if candidates.size == 0:
            return None
        ranks = (table.rank_in_string if scanner.in_string else table.rank_in_structure)[candidates]
        token = int(candidates[int(ranks.argmax())])
        if not probe.consume_token(token) or probe.is_error():
            return None
        scanner.feed(table.texts[token])
        path.append(token)
    return path


class JsonScanner:
    """Whether the JSON text so far ends inside a string (all that closing needs to know beyond the grammar)."""

    def __init__(self) -> None:
        self.in_string = False
        self._escaped = False

    def copy(self) -> JsonScanner:
        twin = JsonScanner()
        twin.in_string, twin._escaped = self.in_string, self._escaped
        return twin

    def feed(self, text: str) -> None:
        for char in text:
            if self._escaped:
                self._escaped = False
            elif self.in_string and char == "\\":
                self._escaped = True
            elif char == '"':
                self.in_string = not self.in_string


class Grammars:
    """Each base model's token table, made on first use (about a second), and the rows' grammars made from it."""

    def __init__(self, tokenizer_of: Callable[[str], tuple[Any, int]]) -> None:
        self._tokenizer_of = tokenizer_of
        self._tables: dict[str, TokenTable] = {}
        self._lock = threading.Lock()

    def row(self, base: str, spec: GrammarSpec, *, close_within_budget: bool = True) -> RowGrammar:
        """A fresh matcher for one row (blocking: call it off the event loop); INVALID_GRAMMAR when it cannot be."""
        return RowGrammar(self._table(base), spec, close_within_budget=close_within_budget)

    def _table(self, base: str) -> TokenTable:
        with self._lock:
            table = self._tables.get(base)
            if table is None:
                tokenizer, vocab_size = self._tokenizer_of(base)
                table = self._tables[base] = TokenTable(tokenizer, vocab_size)
            return table


def _invalid(spec: GrammarSpec, problem: str) -> ServiceError:
    field = {"json_schema": "response_format.json_schema", "regex": "guided_regex", "choice": "guided_choice"}.get(
        spec.kind, "response_format"
    )
    return ServiceError(
        ErrorCode.INVALID_GRAMMAR,
        f"{field}: the constraint cannot be compiled: {' '.join(problem.split())[:300]}",
        details=[{"field": field, "message": problem[:300]}],
    )
