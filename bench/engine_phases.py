"""The engine alone, in this process, through phases of closed-loop load: tokens/s and decode step time per phase.

    .venv/bin/python -m bench.engine_phases [--phases 1,4,1] [--requests 8] [--data-dir .cache/bench-data]

No HTTP, so what it shows is the engine's own. It was written to show a slowdown that outlived a busy
phase: on a 2-core machine a batch-1 step took ~18 ms in a first c=1 phase and ~40 ms in a c=1 phase
after a c=4 one. The cause was a second OpenMP team (rows leaving the batch were dropped with tensor
operations on the event loop's thread; see inference_api.torch_threads); since the fix the phases match.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from bench.prompts import PROMPTS
from inference_api.engine.batch import DecodeBatch
from inference_api.engine.types import GenerationRequest, SamplingParams
from inference_api.observability.metrics import Metrics
from inference_api.services import Services, open_services
from inference_api.settings import load_settings


class StepClock:
    """Times DecodeBatch.step (it runs on the worker's thread, one call at a time)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.steps = 0
        step = DecodeBatch.step

        def timed(batch: DecodeBatch) -> list[str]:
            started = time.perf_counter()
            try:
                return step(batch)
            finally:
                self.seconds += time.perf_counter() - started
                self.steps += 1

        DecodeBatch.step = timed  # type: ignore[method-assign]

    def reset(self) -> None:
        self.seconds, self.steps = 0.0, 0


async def run(data_dir: Path, phases: list[int], requests: int, max_new_tokens: int) -> None:
    settings = load_settings(data_dir=data_dir, log_level="WARNING")
    async with contextlib.AsyncExitStack() as stack:
        services = await open_services(settings, Metrics(), stack, warm_up=True)
        await measure(services, phases, requests, max_new_tokens)


async def measure(services: Services, phases: list[int], requests: int, max_new_tokens: int) -> None:
    engine = services.engine
    # The engine exposes readiness as a flag (what /ready reports), not as an event: poll it.
    while not engine.ready:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    ref = engine.registry.default
    clock = StepClock()
    for concurrency in phases:
        clock.reset()
        sent, tokens = 0, 0

        async def client() -> None:
            nonlocal sent, tokens
            while sent < requests:
                prompt = PROMPTS[sent % len(PROMPTS)]
                sent += 1
                encoded = services.encoder.encode_chat(ref.base, [{"role": "user", "content": prompt}])
                request = GenerationRequest(ref, encoded.ids, SamplingParams(max_new_tokens=max_new_tokens))
                completion = await engine.generate(request)  # awaited first: `tokens` is shared
                tokens += completion.tokens_generated

        started = time.perf_counter()
        await asyncio.gather(*[client() for _ in range(concurrency)])
        seconds = time.perf_counter() - started
        step_ms = clock.seconds / max(1, clock.steps) * 1000
        decoding = clock.seconds / seconds * 100
        tuner = engine.workers[0].threads
        threads = (
            "fixed"
            if tuner is None
            else f"{tuner.current} of {tuner.most}, {tuner.switches}/{tuner.trials} trials switched"
        )
        print(
            f"c={concurrency}: {tokens} tokens in {seconds:.1f} s ({tokens / seconds:.1f} tok/s); "
            f"{clock.steps} decode steps of {step_ms:.1f} ms ({decoding:.0f}% of the time); threads {threads}",
            flush=True,
        )


def main(argv: Any = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--phases", default="1,4,1", help="concurrency of each phase, in order")
    parser.add_argument("--requests", type=int, default=8, help="requests per phase")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--data-dir", type=Path, default=Path(".cache/bench-data"))
    args = parser.parse_args(argv)
    phases = [int(c) for c in args.phases.split(",")]
    asyncio.run(run(args.data_dir, phases, args.requests, args.max_tokens))


if __name__ == "__main__":
    main()
