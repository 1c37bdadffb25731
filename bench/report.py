"""The results table, the throughput ratios, and a description of the machine they were measured on."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.load import LevelResult

REFERENCE_KEY = "ours"


@dataclass(frozen=True)
class ServerRun:
    key: str
    label: str
    token_note: str
    levels: tuple[LevelResult, ...]
    startup_s: float
    # 1-minute load average when measuring began: the machine is shared, and a high value flags noisy numbers.
    load_before: float


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), or None without data."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(runs: Sequence[ServerRun]) -> str:
    header = (
        "| server | concurrency | requests | errors | output tok/s | req/s | TTFT p50 ms | TTFT p95 ms "
        "| E2E p50 s | E2E p95 s | tok/req |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        for level in run.levels:
            ok = level.ok
            ttfts = [r.ttft for r in ok if r.ttft is not None]
            latencies = [r.latency for r in ok]
            tokens_per_request = f"{level.tokens / len(ok):.1f}" if ok else "-"
            lines.append(
                f"| {run.label} | {level.concurrency} | {level.requests} | {level.errors} "
                f"| {level.tokens_per_s:.1f} | {level.requests_per_s:.2f} "
                f"| {_ms(percentile(ttfts, 0.5))} | {_ms(percentile(ttfts, 0.95))} "
                f"| {_s(percentile(latencies, 0.5))} | {_s(percentile(latencies, 0.95))} | {tokens_per_request} |"
            )
    return "\n".join(lines)


def ratios(runs: Sequence[ServerRun]) -> list[str]:
    """Our batching server's output tokens/s divided by each other server's, per concurrency."""
    reference = next((run for run in runs if run.key == REFERENCE_KEY), None)
    if reference is None:
        return []
    ours = {level.concurrency: level.tokens_per_s for level in reference.levels}
    lines = []
    for run in runs:
        if run is reference:
            continue
        parts = []
        for level in run.levels:
            mine = ours.get(level.concurrency)
            if mine is None or level.tokens_per_s <= 0:
                parts.append(f"c={level.concurrency} n/a")
            else:
                parts.append(f"c={level.concurrency} {mine / level.tokens_per_s:.2f}x")
        lines.append(f"- {reference.label} vs {run.label}: " + ", ".join(parts))
    return lines


def gateway_lines(runs: Sequence[ServerRun]) -> list[str]:
    """Our gateway against the upstream it fronts (vLLM direct), per concurrency: throughput ratio, TTFT p50 added."""
    gateway = next((run for run in runs if run.key == "gateway"), None)
    direct = next((run for run in runs if run.key == "vllm"), None)
    if gateway is None or direct is None:
        return []
    theirs = {level.concurrency: level for level in direct.levels}
    lines = []
    for level in gateway.levels:
        other = theirs.get(level.concurrency)
        if other is None or other.tokens_per_s <= 0:
            continue
        mine_ttft = percentile([r.ttft for r in level.ok if r.ttft is not None], 0.5)
        their_ttft = percentile([r.ttft for r in other.ok if r.ttft is not None], 0.5)
        added = "n/a" if mine_ttft is None or their_ttft is None else f"{(mine_ttft - their_ttft) * 1000:+.0f} ms"
        lines.append(
            f"- c={level.concurrency}: throughput {level.tokens_per_s / other.tokens_per_s:.1%} of direct, "
            f"TTFT p50 {added}"
        )
    return lines


def round_ratios(blocks: Mapping[str, Mapping[int, Sequence[LevelResult]]]) -> list[str]:
    """Per level and peer, the median and range of ours/peer over the rounds both measured (servers in turns)."""
    reference = blocks.get(REFERENCE_KEY)
    if not reference:
        return []
    lines = []
    for key, levels in blocks.items():
        if key == REFERENCE_KEY:
            continue
        for concurrency, theirs in levels.items():
            ours = reference.get(concurrency, [])
            pairs = [
                mine.tokens_per_s / other.tokens_per_s
                for mine, other in zip(ours, theirs, strict=False)
                if other.tokens_per_s > 0
            ]
            if len(pairs) > 1:
                lines.append(
                    f"ours vs {key} at c={concurrency}, round by round: median {statistics.median(pairs):.2f}x, "
                    f"{min(pairs):.2f}x to {max(pairs):.2f}x over {len(pairs)} rounds"
                )
    return lines


def error_notes(runs: Sequence[ServerRun]) -> list[str]:
    lines = []
    for run in runs:
        for level in run.levels:
            reasons = Counter(r.error or "?" for r in level.results if not r.ok)
            if reasons:
                detail = ", ".join(f"{count} x {reason}" for reason, count in reasons.most_common())
                lines.append(f"- {run.label} c={level.concurrency}: {detail}")
    return lines


def token_notes(runs: Sequence[ServerRun]) -> list[str]:
    lines = []
    for run in runs:
        sources = Counter(r.token_source for level in run.levels for r in level.ok)
        used = ", ".join(f"{source}: {count}" for source, count in sources.most_common()) or "no successful request"
        lines.append(
            f"- {run.label}: {run.token_note} ({used}); ready after {run.startup_s:.1f} s; "
            f"load average {run.load_before:.2f} when measuring began"
        )
    return lines


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return "unknown"


def _version(package: str) -> str:
    # Read from the installed metadata: importing torch or llama_cpp just to print a version is slow.
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_description() -> list[str]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- CPU: {_cpu_model()}, {cores} cores usable ({os.cpu_count()} online), memory {_memory_gib()}",
        f"- Python {platform.python_version()} on {platform.system()} {platform.release()}",
        f"- torch {_version('torch')}, transformers {_version('transformers')}, "
        f"llama-cpp-python {_version('llama_cpp_python')}",
    ]
