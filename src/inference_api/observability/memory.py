"""The device memory monitor: reads each device's memory, logs threshold crossings, and refuses new work at critical.

On a CUDA device the pressure is the device's used fraction (every process on it counts); on the CPU
it is the process's resident memory against the machine's memory (or the container's limit).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

from inference_api.observability.metrics import Metrics

logger = logging.getLogger(__name__)

OK, WARNING, CRITICAL = 0, 1, 2
_LEVEL_NAMES = {OK: "ok", WARNING: "warning", CRITICAL: "critical"}
_CGROUP_LIMIT = Path("/sys/fs/cgroup/memory.max")


@dataclass(frozen=True)
class DeviceMemory:
    device: str
    allocated: int
    reserved: int
    total: int
    used: int  # what the pressure is measured by

    @property
    def fraction(self) -> float:
        return self.used / self.total if self.total else 0.0


MemoryReader = Callable[[], list[DeviceMemory]]


def memory_limit() -> int:
    """The machine's memory, or the container's cgroup limit when that is lower."""
    total = psutil.virtual_memory().total
    try:
        text = _CGROUP_LIMIT.read_text().strip()
    except OSError:
        return total
    return min(total, int(text)) if text.isdigit() else total


def read_device_memory(devices: Sequence[torch.device]) -> list[DeviceMemory]:
    """One reading per device the workers use."""
    readings = []
    for device in devices:
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            free, total = torch.cuda.mem_get_info(index)
            readings.append(
                DeviceMemory(
                    device=f"cuda:{index}",
                    allocated=torch.cuda.memory_allocated(index),
                    reserved=torch.cuda.memory_reserved(index),
                    total=total,
                    used=total - free,
                )
            )
        else:
            rss = psutil.Process().memory_info().rss
            readings.append(DeviceMemory("cpu", allocated=rss, reserved=rss, total=memory_limit(), used=rss))
    return readings


class MemoryMonitor:
    """Sets the memory gauges each check; logs when a device crosses a threshold either way; at critical,
    `on_critical(True)` (admission refuses new work) until every device is back below critical."""

    def __init__(
        self,
        read: MemoryReader,
        *,
        warning: float,
        critical: float,
        metrics: Metrics,
        on_critical: Callable[[bool], None],
    ) -> None:
        self.read = read  # replaceable, so tests can drive the thresholds without filling memory
        self.warning = warning
        self.critical = critical
        self._metrics = metrics
        self._on_critical = on_critical
        self._levels: dict[str, int] = {}
        self.refusing = False

    def level(self, fraction: float) -> int:
        if fraction >= self.critical:
            return CRITICAL
        return WARNING if fraction >= self.warning else OK

    def check(self) -> dict[str, Any]:
        report = []
        for reading in self.read():
            level = self.level(reading.fraction)
            previous = self._levels.get(reading.device, OK)
            self._levels[reading.device] = level
            self._metrics.device_memory(reading.device, reading.allocated, reading.reserved, reading.total, level)
            if level != previous:
                self._log_crossing(reading, previous, level)
            report.append(
                {"device": reading.device, "used_fraction": round(reading.fraction, 4), "level": _LEVEL_NAMES[level]}
            )
        refusing = any(level == CRITICAL for level in self._levels.values())
        if refusing != self.refusing:
            self.refusing = refusing
            self._on_critical(refusing)
        return {"devices": report, "refusing_new_work": refusing}

    def _log_crossing(self, reading: DeviceMemory, previous: int, level: int) -> None:
        used = f"{reading.fraction:.1%} of {reading.total / 2**30:.1f} GiB"
        if level == CRITICAL:
            logger.error(
                "device memory critical on %s: %s used (MEMORY_CRITICAL=%s); refusing new requests",
                reading.device,
                used,
                self.critical,
            )
        elif level == WARNING and previous == OK:
            logger.warning("device memory high on %s: %s used (MEMORY_WARNING=%s)", reading.device, used, self.warning)
        else:
            logger.warning("device memory on %s back to %s: %s used", reading.device, _LEVEL_NAMES[level], used)


def retry_after(check_interval: float) -> int:
    """Seconds a refused client should wait: memory is looked at again after one check interval."""
    return max(1, math.ceil(check_interval))
