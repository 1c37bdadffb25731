"""Where torch's CPU work runs, and with how many threads.

Placement: torch's CPU build uses libgomp, which keeps an OpenMP team for every thread that has run a
parallel region, until that thread exits. Once a process holds more OpenMP threads than it has cores,
libgomp stops spinning between parallel regions and puts its threads to sleep after each one, in every
team. On 2 cores one team too many (one tensor operation on the event loop's thread) made batch-1 decode
steps ~2x slower (~20 to ~45 ms) for the rest of the process. So tensor work that cannot go to the
worker's thread (the embedding model, loading it) runs on a thread of its own that then ends, taking its
team along.

Size: every parallel region waits for its slowest thread, so a team with a thread on a core that someone
else is using runs at the pace of the scheduler's time slices, not of the cores. That happens when the team
is larger than what the process may really use (a container's CPU quota is not the host's core count), and
when a neighbour takes a core (another process, or our own event loop streaming the previous step's
tokens). Measured on 2 cores with other processes busy: a batch-32 decode step took ~1.4 s with two threads
and ~0.19 s with one. `usable_cpus` sizes the team from the affinity mask and the cgroup's quota, and
`ThreadTuner` keeps re-measuring decode steps with one thread fewer (or more) and keeps the faster.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import statistics
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ParamSpec, TypeVar

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_CGROUP_ROOT = Path("/sys/fs/cgroup")


async def in_passing_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run blocking tensor work on a new thread that exits when it is done (even if the caller is cancelled)."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tensor-work")
    try:
        return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(fn, *args, **kwargs))
    finally:
        executor.shutdown(wait=False)


def cgroup_cpu_quota(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = _CGROUP_ROOT) -> float | None:
    """The CPUs' worth of time the process's cgroup (or an ancestor) may use, e.g. 1.5; None when unlimited.

    cgroup v2 keeps it in `cpu.max` ("150000 100000", or "max 100000"); v1 in the cpu controller's
    `cpu.cfs_quota_us` (-1: none) and `cpu.cfs_period_us`. The smallest limit on the way to the root applies.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits: list[float] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            base, v2 = root, True
        elif "cpu" in controllers.split(","):
            base, v2 = root / controllers, False
            if not base.is_dir():  # "cpu,cpuacct" is often mounted as cpu/ or cpuacct/ links
                base = root / "cpu"
        else:
            continue
        folder = base / path.lstrip("/")
        while True:
            limit = _v2_limit(folder) if v2 else _v1_limit(folder)
            if limit is not None:
                limits.append(limit)
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return min(limits) if limits else None


def _v2_limit(folder: Path) -> float | None:
    try:
        quota, _, period = (folder / "cpu.max").read_text().strip().partition(" ")
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_limit(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def usable_cpus(quota: float | None = None, affinity: int | None = None) -> int:
    """How many threads the process can run at once: the CPUs it may be scheduled on, capped by its quota.

    A quota of 1.5 CPUs allows two threads half the time; it is rounded up, and `ThreadTuner` finds out
    whether the second thread pays.
    """
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if quota is None:
        quota = cgroup_cpu_quota()
    if quota is not None:
        affinity = min(affinity, math.ceil(quota))
    return max(1, affinity)


class ThreadTuner:
    """Chooses the OpenMP team size of the thread that runs decode steps, by timing the steps themselves.

    Every `interval` seconds of stepping a trial runs: steps alternate between the current size and a
    neighbour (one fewer, or one more, in turn), and the size whose steps took less (median, by `margin`)
    is kept. Alternating keeps both sides under the same load and batch. A trial ends at the first
    neighbour step that took twice the current size's median, so a bad guess costs one step; a trial that
    changes nothing doubles the interval (up to `max_interval`), one that does resets it.

    `run` must be called on the thread whose team it sizes (torch.set_num_threads is per thread).
    """

    def __init__(
        self,
        most: int,
        *,
        set_threads: Callable[[int], None],
        interval: float = 2.0,
        max_interval: float = 30.0,
        trial_steps: int = 4,
        margin: float = 0.05,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.most = max(1, most)
        self.current = self.most
        self._set_threads = set_threads
        self._base_interval = interval
        self._interval = interval
        self._max_interval = max_interval
        self._trial_steps = trial_steps
        self._margin = margin
        self._clock = clock
        self._next_trial = clock() + interval
        self._downward = True  # which neighbour the next trial tries, when both exist
        self._recent: deque[float] = deque(maxlen=8)  # step seconds at the current size
        self._trial: tuple[int, list[float], list[float]] | None = None  # size, its steps, current's steps
        self._applied: int | None = None
        self.trials = 0
        self.switches = 0

    def run(self, step: Callable[[], T]) -> T:
        """Run one decode step with the size this tuner picks for it, and learn from how long it took."""
        if self.most == 1:
            return self._timed(1, step)[0]
        if self._trial is None and self._clock() >= self._next_trial and len(self._recent) >= 2:
            self._trial = (self._neighbour(), [], [])
        if self._trial is None:
            result, seconds = self._timed(self.current, step)
            self._recent.append(seconds)
            return result
        size, tried, kept = self._trial
        # Alternate, the neighbour first: it is compared with the current size's steps on either side.
        use = size if len(tried) <= len(kept) else self.current
        result, seconds = self._timed(use, step)
        (tried if use == size else kept).append(seconds)
        if use == size and seconds > 2 * statistics.median(self._recent):
            self._finish(switch=False)
        elif len(kept) >= self._trial_steps:
            self._finish(switch=statistics.median(tried) < (1 - self._margin) * statistics.median(kept))
        return result

    def _timed(self, size: int, step: Callable[[], T]) -> tuple[T, float]:
        self._apply(size)
        started = self._clock()
        try:
            result = step()
        finally:
            seconds = self._clock() - started
            # Whatever runs next on this thread (a prefill) runs with the chosen size, never a tried one.
            self._apply(self.current)
        return result, seconds

    def _apply(self, size: int) -> None:
        if self._applied != size:
            self._set_threads(size)
            self._applied = size

    def _neighbour(self) -> int:
        if self.current == 1:
            return 2
        if self.current == self.most:
            return self.current - 1
        self._downward = not self._downward
        return self.current - 1 if self._downward else self.current + 1

    def _finish(self, switch: bool) -> None:
        assert self._trial is not None
        size, tried, kept = self._trial
        self._trial = None
        self.trials += 1
        if switch:
            logger.info(
                "decode steps now use %d threads instead of %d (median step %.1f ms against %.1f ms)",
                size,
                self.current,
                statistics.median(tried) * 1000,
                statistics.median(kept) * 1000,
            )
            self.current = size
            self._apply(size)
            self.switches += 1
            self._recent = deque(tried, maxlen=self._recent.maxlen)
            self._interval = self._base_interval
        else:
            self._recent = deque(kept or self._recent, maxlen=self._recent.maxlen)
            self._interval = min(self._max_interval, self._interval * 2)
        self._next_trial = self._clock() + self._interval
