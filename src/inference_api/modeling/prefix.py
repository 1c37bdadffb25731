"""Keys and values of prompt prefixes that many requests share, computed once per base model and adapter.

Chat prompts begin with the same system block (SmolLM2's template adds a default system prompt: 24 of the
~46 tokens of a typical one-line question). A prefill then runs only the rest of each prompt on top of the
stored prefix. The prefix is always computed on its own, also the first time, so a request's numbers do not
depend on whether its prefix was stored already.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

LayerStates = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values, [1, kv_heads, tokens, dim]


class PrefixStore:
    """Least recently used prefixes first out, once the stored tokens pass `max_tokens`."""

    def __init__(self, max_tokens: int = 8192) -> None:
        self.max_tokens = max_tokens
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[str | None, tuple[int, ...]], LayerStates] = OrderedDict()
        self._tokens = 0
        self._lock = threading.Lock()  # the worker's thread writes; /status may read from another

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def tokens(self) -> int:
        return self._tokens

    def get(self, adapter: str | None, ids: tuple[int, ...]) -> LayerStates | None:
        with self._lock:
            states = self._entries.get((adapter, ids))
            if states is None:
                self.misses += 1
                return None
            self._entries.move_to_end((adapter, ids))
            self.hits += 1
            return states

    def put(self, adapter: str | None, ids: tuple[int, ...], states: LayerStates) -> None:
        if len(ids) > self.max_tokens:
            return
        with self._lock:
            if (adapter, ids) in self._entries:
                return
            self._entries[(adapter, ids)] = states
            self._tokens += len(ids)
            while self._tokens > self.max_tokens:
                (_, dropped), _ = self._entries.popitem(last=False)
                self._tokens -= len(dropped)

    def forget(self, adapter: str | None) -> None:
        """Drop an adapter's prefixes (it was removed or replaced: they were computed with its weights)."""
        with self._lock:
            for key in [key for key in self._entries if key[0] == adapter]:
                del self._entries[key]
                self._tokens -= len(key[1])
