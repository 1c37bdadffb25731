"""Tensor work off the worker's thread leaves no thread (and so no OpenMP team) behind."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest
import torch

from inference_api.torch_threads import ThreadTuner, cgroup_cpu_quota, in_passing_thread, usable_cpus


def thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


async def settled_count(expected: int, seconds: float = 5.0) -> int:
    deadline = time.monotonic() + seconds
    # Thread exits signal nothing to wait on: poll.
    while (count := thread_count()) != expected and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
async def test_parallel_tensor_work_leaves_no_thread_behind() -> None:
    loop_thread = threading.get_ident()
    big = torch.ones(1_000_000)
    before = thread_count()

    def work() -> tuple[float, int]:
        # An elementwise op this large is split across torch's OpenMP team, which is created for this thread.
        return float(torch.add(big, big).sum()), threading.get_ident()

    total, ran_on = await in_passing_thread(work)
    assert total == 2_000_000 and ran_on != loop_thread
    assert await settled_count(before) == before


async def test_errors_reach_the_caller() -> None:
    def fail() -> None:
        raise ValueError("bad tensor")

    with pytest.raises(ValueError, match="bad tensor"):
        await in_passing_thread(fail)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_is_read_from_the_process_group_and_its_ancestors(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    write(proc, "0::/kubepods/pod1/container\n")
    root = tmp_path / "fs"
    write(root / "kubepods/pod1/container/cpu.max", "max 100000\n")
    write(root / "kubepods/pod1/cpu.max", "150000 100000\n")
    write(root / "kubepods/cpu.max", "400000 100000\n")
    assert cgroup_cpu_quota(proc, root) == 1.5
    write(root / "kubepods/pod1/cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(proc, root) == 4.0
    write(root / "kubepods/cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(proc, root) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    write(proc, "5:memory:/x\n4:cpu,cpuacct:/docker/abc\n")
    root = tmp_path / "fs"
    write(root / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "50000\n")
    write(root / "cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(proc, root) == 0.5
    write(root / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_quota(proc, root) is None
    assert cgroup_cpu_quota(tmp_path / "missing", root) is None


def test_usable_cpus_is_the_affinity_capped_by_the_quota_rounded_up() -> None:
    assert usable_cpus(quota=None, affinity=8) == 8
    assert usable_cpus(quota=1.5, affinity=8) == 2
    assert usable_cpus(quota=0.2, affinity=8) == 1
    assert usable_cpus(quota=16.0, affinity=4) == 4
    assert 1 <= usable_cpus() <= (os.cpu_count() or 1)


class FakeSteps:
    """Decode steps whose duration depends on the team size: `cost[size]` seconds, on a fake clock."""

    def __init__(self, cost: dict[int, float]) -> None:
        self.cost = cost
        self.now = 0.0
        self.size = 0
        self.sizes: list[int] = []
        self.applied: list[int] = []

    def clock(self) -> float:
        return self.now

    def set_threads(self, size: int) -> None:
        self.size = size
        self.applied.append(size)

    def step(self) -> int:
        self.sizes.append(self.size)
        self.now += self.cost[self.size]
        return self.size

    def tuner(self, most: int) -> ThreadTuner:
        return ThreadTuner(most, set_threads=self.set_threads, clock=self.clock, interval=1.0, max_interval=8.0)


def test_tuner_keeps_all_threads_while_they_are_faster() -> None:
    steps = FakeSteps({1: 0.09, 2: 0.05})
    tuner = steps.tuner(2)
    for _ in range(400):
        tuner.run(steps.step)
    assert tuner.current == 2 and tuner.switches == 0 and tuner.trials >= 3
    # Each trial of one thread costs at most its steps, and trials back off: nearly every step used both.
    assert steps.sizes.count(1) <= 4 * tuner.trials and steps.sizes.count(2) > 0.9 * len(steps.sizes)


def test_tuner_drops_a_thread_when_a_core_is_taken_and_takes_it_back_when_freed() -> None:
    steps = FakeSteps({1: 0.09, 2: 0.05})
    tuner = steps.tuner(2)
    for _ in range(50):
        tuner.run(steps.step)
    steps.cost = {1: 0.1, 2: 0.6}  # a neighbour took a core: the two-thread team waits for it at every region
    for _ in range(200):
        tuner.run(steps.step)
    assert tuner.current == 1
    assert steps.size == 1  # after a trial step of two threads, the thread is back to one for what runs next
    recent = steps.sizes[-100:]
    assert recent.count(2) <= 2  # trials of the bad size end after one step
    steps.cost = {1: 0.09, 2: 0.05}
    for _ in range(400):
        tuner.run(steps.step)
    assert tuner.current == 2 and tuner.switches == 2


def test_tuner_walks_down_to_the_best_size_and_leaves_the_chosen_size_applied() -> None:
    steps = FakeSteps({1: 0.2, 2: 0.1, 3: 0.12, 4: 0.3})
    tuner = steps.tuner(4)
    for _ in range(500):
        tuner.run(steps.step)
        assert steps.size == tuner.current  # between steps the thread keeps the chosen size
    assert tuner.current == 2
    single = FakeSteps({1: 0.1})
    one = single.tuner(1)
    one.run(single.step)
    assert single.sizes == [1] and one.trials == 0
