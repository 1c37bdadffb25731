"""Answers to deterministic requests, kept so that the same request again is answered without generating.

A request is deterministic when it decodes greedily (or by beam search) or samples with a `seed`. Its key is
everything its answer depends on: the owner (answers are never shared between API keys), the model and
version, the prompt's token ids, the sampling parameters and the document chunks it was grounded on. The
answer is kept with its text deltas, so that a stream replays as deltas. The cache is bounded in bytes
(least recently used dropped first), lives in the process (each replica has its own), and forgets a
model's answers when the model is loaded or unloaded again and an owner's answers when the owner's
documents change.
"""

from __future__ import annotations

import hashlib
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from inference_api.documents.protocol import Source
from inference_api.engine.grammar import GrammarSpec
from inference_api.engine.types import Completion, GenerationRequest, SamplingParams
from inference_api.modeling.registry import ModelRef
from inference_api.observability.metrics import Metrics

_ENTRY_OVERHEAD = 512  # bytes an entry costs beyond its text: the key, the completion, the bookkeeping


@dataclass(frozen=True)
class CacheKey:
    owner: str
    ref: ModelRef
    prompt: bytes  # a digest of the prompt's token ids
    params: SamplingParams
    sources: tuple[tuple[str, int], ...] | None  # (document id, chunk) the prompt was grounded on
    grammar: GrammarSpec | None = None  # what the output had to match (response_format, guided_*)


@dataclass(frozen=True)
class CachedAnswer:
    deltas: tuple[str, ...]
    completion: Completion


def deterministic(params: SamplingParams) -> bool:
    return params.greedy or params.seed is not None


class ResponseCache:
    """A bounded LRU of answers by CacheKey; `max_bytes` 0 turns it off."""

    def __init__(self, max_bytes: int, metrics: Metrics | None = None) -> None:
        self.max_bytes = max_bytes
        self._metrics = metrics
        self._entries: OrderedDict[CacheKey, tuple[CachedAnswer, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, request: GenerationRequest, sources: Sequence[Source] | None) -> CacheKey | None:
        """The request's key, or None when its answer is not to be kept (the cache is off, it samples without a
        seed, or it has no owner to keep it for)."""
        if not self.enabled or request.owner is None or not deterministic(request.params):
            return None
        if request.params.logprobs is not None:  # a replayed stream would come without its tokens' logprobs
            return None
        digest = hashlib.blake2b(array("q", request.prompt_ids).tobytes(), digest_size=20).digest()
        grounded = tuple((s.document_id, s.chunk_index) for s in sources) if sources is not None else None
        grammar = request.grammar.spec if request.grammar is not None else request.structured
        return CacheKey(request.owner, request.model, digest, request.params, grounded, grammar)

    def get(self, key: CacheKey) -> CachedAnswer | None:
        """The kept answer, its completion marked `cached` with the lookup as its generation time."""
        started = time.perf_counter()
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
        if self._metrics is not None:
            (self._metrics.response_cache_hit if found else self._metrics.response_cache_miss)(
                key.ref.base, key.ref.version
            )
        if found is None:
            return None
        answer = found[0]
        completion = replace(
            answer.completion, cached=True, queue_time=0.0, generation_time=time.perf_counter() - started
        )
        return CachedAnswer(answer.deltas, completion)

    def put(self, key: CacheKey, deltas: Sequence[str], completion: Completion) -> None:
        size = _ENTRY_OVERHEAD + len(key.prompt) + sum(len(d.encode()) for d in deltas) + len(completion.text.encode())
        if size > self.max_bytes:
            return
        answer = CachedAnswer(tuple(deltas), completion)
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._bytes -= previous[1]
            self._entries[key] = (answer, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped
        self._report()

    def forget_owner(self, owner: str) -> int:
        """Drop an owner's answers (their documents changed)."""
        return self._forget(lambda key: key.owner == owner)

    def forget_model(self, base: str) -> int:
        """Drop every answer of a base model, all its versions (a version or adapter was loaded or unloaded)."""
        return self._forget(lambda key: key.ref.base == base)

    def _forget(self, matches: Callable[[CacheKey], bool]) -> int:
        with self._lock:
            doomed = [key for key in self._entries if matches(key)]
            for key in doomed:
                self._bytes -= self._entries.pop(key)[1]
        self._report()
        return len(doomed)

    def _report(self) -> None:
        if self._metrics is not None:
            self._metrics.response_cache_size(self._bytes)
