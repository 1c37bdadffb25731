"""Periodic jobs in one place: each runs on its interval, and its last run is recorded for /status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

Job = Callable[[], Awaitable[dict[str, Any] | None]]  # None: nothing to do this time (not recorded as a run)


@dataclass
class JobRecord:
    name: str
    interval: float
    runs: int = 0
    failures: int = 0
    last_started: float | None = None
    last_duration: float | None = None
    last_result: dict[str, Any] | None = None
    last_error: str | None = None


@dataclass
class Maintenance:
    """Runs registered jobs every `interval` seconds each, one job at a time, until stopped."""

    jobs: dict[str, tuple[Job, JobRecord]] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _log_levels: dict[str, int] = field(default_factory=dict)
    _at_start: set[str] = field(default_factory=set)

    def add(
        self, name: str, interval: float, job: Job, *, log_level: int = logging.INFO, at_start: bool = False
    ) -> None:
        """Register a job; a frequent one logs its results at a lower level (`log_level`); `at_start` runs it
        first as soon as maintenance starts (recovery after a crash should not wait a whole interval)."""
        self.jobs[name] = (job, JobRecord(name, interval))
        self._log_levels[name] = log_level
        if at_start:
            self._at_start.add(name)

    async def run_once(self, name: str) -> JobRecord:
        job, record = self.jobs[name]
        started = time.time()
        try:
            result = await job()
        except Exception as exc:
            record.failures += 1
            record.last_error = type(exc).__name__
            logger.exception("maintenance job %s failed", name)
            return record
        if result is not None:
            record.runs += 1
            record.last_started = started
            record.last_duration = round(time.time() - started, 4)
            record.last_result = result
            record.last_error = None
            logger.log(self._log_levels.get(name, logging.INFO), "maintenance %s: %s", name, result)
        return record

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="maintenance")

    async def _loop(self) -> None:
        now = time.monotonic()
        due = {name: now + (0 if name in self._at_start else rec.interval) for name, (_, rec) in self.jobs.items()}
        while True:
            name = min(due, key=due.__getitem__)
            await asyncio.sleep(max(0.0, due[name] - time.monotonic()))
            await self.run_once(name)
            due[name] = time.monotonic() + self.jobs[name][1].interval

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def report(self) -> list[dict[str, Any]]:
        return [record.__dict__.copy() for _, record in self.jobs.values()]
