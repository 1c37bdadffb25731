"""An LRU cache of loaded (base model, version) pairs for one device.

Entries are pairs, but weights are held per base: every adapter version of a base is a peft
adapter on the same loaded base model, so ten versions of one base cost one copy of its weights.
Only the worker that owns the device calls `get` and `evict`; other threads read snapshots.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from inference_api.modeling.loader import LoadedBase, Precision, load_base
from inference_api.modeling.prefix import PrefixStore
from inference_api.modeling.registry import BASE_VERSION, BaseModelSpec, ModelRef, ModelRegistry
from inference_api.observability.metrics import Metrics

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A cache entry: a base model plus the adapter (or none) that makes it this version."""

    ref: ModelRef
    base: LoadedBase
    adapter: str | None

    def activate(self) -> None:
        self.base.activate(self.adapter)


@dataclass
class CacheStats:
    hits: Counter[ModelRef] = field(default_factory=Counter)
    misses: Counter[ModelRef] = field(default_factory=Counter)
    load_seconds: dict[ModelRef, float] = field(default_factory=dict)
    evictions: int = 0


class BaseLoader(Protocol):
    def __call__(
        self, spec: BaseModelSpec, data_dir: Path, device: torch.device, precision: Precision
    ) -> LoadedBase: ...


class ModelCache:
    def __init__(
        self,
        registry: ModelRegistry,
        *,
        data_dir: Path,
        device: torch.device,
        precision: Precision,
        capacity: int,
        pinned: frozenset[ModelRef] = frozenset(),
        loader: BaseLoader = load_base,
        metrics: Metrics | None = None,
        prefix_tokens: int = 2048,
    ) -> None:
        self.metrics = metrics or Metrics()
        self._registry = registry
        self._data_dir = data_dir
        self.device = device
        self.precision = precision
        self.capacity = capacity
        self.prefix_tokens = prefix_tokens  # each base's PrefixStore budget; 0: prompts are not split
        # Pinned entries (the default model: readiness promises it stays loaded) are never evicted.
        self._pinned = pinned
        self._loader = loader
        self._entries: OrderedDict[ModelRef, LoadedModel] = OrderedDict()
        self._bases: dict[str, LoadedBase] = {}
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def get(self, ref: ModelRef) -> LoadedModel:
        """The loaded model for `ref`, loading it (and evicting the least recently used) on a miss."""
        with self._lock:
            entry = self._entries.get(ref)
            if entry is not None:
                self._entries.move_to_end(ref)
                self.stats.hits[ref] += 1
                self.metrics.cache_hit(ref.base, ref.version)
                return entry
            self.stats.misses[ref] += 1
        self.metrics.cache_miss(ref.base, ref.version)
        spec = self._registry.resolve(ref)
        try:
            entry = self._load(spec, ref)
        except Exception:
            self.metrics.model_load_failed(ref.base, ref.version)
            raise
        with self._lock:
            self._entries[ref] = entry
            victims = []
            evictable = [r for r in self._entries if r not in self._pinned and r != ref]
            while len(self._entries) > self.capacity and evictable:
                victims.append(self._entries.pop(evictable.pop(0)))
        for victim in victims:
            self._release(victim)
        return entry

    def peek(self, ref: ModelRef) -> LoadedModel | None:
        with self._lock:
            return self._entries.get(ref)

    def refs(self) -> list[ModelRef]:
        """Cached pairs, least recently used first."""
        with self._lock:
            return list(self._entries)

    def loaded_bases(self) -> dict[str, LoadedBase]:
        with self._lock:
            return dict(self._bases)

    def evict(self, base: str) -> int:
        """Drop every cached version of `base`; returns how many entries went."""
        with self._lock:
            victims = [self._entries.pop(ref) for ref in list(self._entries) if ref.base == base]
        for victim in victims:
            self._release(victim)
        return len(victims)

    def clear(self) -> None:
        with self._lock:
            victims = list(self._entries.values())
            self._entries.clear()
        for victim in victims:
            self._release(victim)

    def _load(self, spec: BaseModelSpec, ref: ModelRef) -> LoadedModel:
        started = time.perf_counter()
        with self._lock:
            base = self._bases.get(spec.name)
        if base is None:
            base = self._loader(spec, self._data_dir, self.device, self.precision)
            base.prefixes = PrefixStore(self.prefix_tokens)
            with self._lock:
                self._bases[spec.name] = base
        adapter = None if ref.version == BASE_VERSION else ref.version
        if adapter is not None and adapter not in base.adapters:
            try:
                base.add_adapter(adapter, spec.adapters[adapter])
            except Exception:
                # A base loaded only for this adapter must not outlive the failure outside CACHE_SIZE.
                with self._lock:
                    if not any(e.base is base for e in self._entries.values()):
                        self._bases.pop(spec.name, None)
                raise
        self.stats.load_seconds[ref] = time.perf_counter() - started
        memory = base.memory_bytes if adapter is None else adapter_bytes(base, adapter)
        self.metrics.model_loaded(ref.base, ref.version, self.stats.load_seconds[ref], memory)
        return LoadedModel(ref, base, adapter)

    def _release(self, entry: LoadedModel) -> None:
        self.stats.evictions += 1
        self.metrics.model_unloaded(entry.ref.base, entry.ref.version)
        logger.info("evicting %s from the model cache", entry.ref)
        if entry.adapter is not None:
            entry.base.remove_adapter(entry.adapter)
        with self._lock:
            still_used = any(e.base is entry.base for e in self._entries.values())
            if not still_used:
                self._bases.pop(entry.base.name, None)
        if not still_used:
            del entry
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


def adapter_bytes(base: LoadedBase, adapter: str) -> int:
    """Memory of one adapter's own weights (peft names them `...lora_A.<adapter>.weight`)."""
    marker = f".{adapter}."
    return sum(p.numel() * p.element_size() for name, p in base.model.named_parameters() if marker in name)
