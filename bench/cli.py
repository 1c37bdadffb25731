"""`python -m bench`: start each server in turn, put the same load on it, print one comparison table."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

from bench.load import LevelResult, run_level
from bench.prompts import PROMPTS
from bench.report import (
    ServerRun,
    error_notes,
    gateway_lines,
    machine_description,
    ratios,
    round_ratios,
    table,
    token_notes,
)
from bench.servers import (
    OURS_APIS,
    OURS_BATCH,
    SERVER_KEYS,
    BenchError,
    ServerProcess,
    ServerSpec,
    build_specs,
    prepare_model,
    usable_model_folder,
)

DEFAULT_CONCURRENCY = (1, 4, 16, 32, 64)
QUICK_CONCURRENCY = (1, 4)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("expected positive integers")
    return values


def _server_list(text: str) -> list[str]:
    keys = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [k for k in keys if k not in SERVER_KEYS]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(f"unknown server(s) {unknown}; choose from {','.join(SERVER_KEYS)}")
    return list(dict.fromkeys(keys))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Compare LLM servers on the same model (SmolLM2-135M-Instruct) under the same closed-loop load.",
    )
    parser.add_argument(
        "--servers",
        type=_server_list,
        default=list(SERVER_KEYS),
        help=f"comma-separated subset of {','.join(SERVER_KEYS)} (default: all)",
    )
    parser.add_argument(
        "--concurrency",
        type=_int_list,
        help="comma-separated client counts (default: 1,4,16,32,64; with --quick: 1,4)",
    )
    parser.add_argument(
        "--ours-api",
        choices=OURS_APIS,
        default="v1",
        help="how the load reaches our server: /v1/chat/completions streams like every peer (default), or /infer",
    )
    parser.add_argument(
        "--requests",
        type=int,
        help="measured requests per concurrency level (default: max(8, 2*concurrency); --quick: max(2, concurrency))",
    )
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens asked for per request (default: 64)")
    parser.add_argument("--quick", action="store_true", help="smoke run: concurrency 1,4 and few requests")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run all servers at once and measure each level in this many blocks per server, the servers taking "
        "turns (default 1: one server after another)",
    )
    parser.add_argument(
        "--busy-core",
        action="store_true",
        help="keep the last usable core busy with a spinning process while measuring (a noisy neighbour)",
    )
    parser.add_argument("--output", type=Path, help="also write the table and machine description to this file")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".cache/bench-data"),
        help="DATA_DIR for our server: the prepared model and server logs (default: .cache/bench-data)",
    )
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds a server gets to become ready")
    parser.add_argument("--request-timeout", type=float, default=300.0, help="client timeout per request, seconds")
    parser.add_argument("--level-timeout", type=float, default=900.0, help="limit for one concurrency level, seconds")
    args = parser.parse_args(argv)
    if args.requests is not None and args.requests < 1:
        parser.error("--requests must be at least 1")
    if args.max_tokens < 1:
        parser.error("--max-tokens must be at least 1")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.concurrency is None:
        args.concurrency = list(QUICK_CONCURRENCY if args.quick else DEFAULT_CONCURRENCY)
    return args


def requests_for(concurrency: int, args: argparse.Namespace) -> int:
    if args.requests is not None:
        return int(args.requests)
    return max(2, concurrency) if args.quick else max(8, 2 * concurrency)


def block_sizes(requests: int, rounds: int, concurrency: int) -> list[int]:
    """`requests` split into up to `rounds` even blocks of at least twice `concurrency` requests each.

    A block of fewer requests than clients would run below the level's concurrency, and one of barely as
    many would be a single wave that ends with its slowest request rather than a steady closed loop.
    """
    blocks = max(1, min(rounds, requests // (2 * concurrency)))
    return [requests // blocks + (1 if index < requests % blocks else 0) for index in range(blocks)]


@contextlib.contextmanager
def busy_core() -> Iterator[int]:
    """A process spinning on the last core this process may use (and only there), for the `with` block."""
    core = max(os.sched_getaffinity(0))
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
    try:
        os.sched_setaffinity(spinner.pid, {core})
        yield core
    finally:
        spinner.kill()
        spinner.wait()


def _neighbour(args: argparse.Namespace) -> contextlib.AbstractContextManager[object]:
    return busy_core() if args.busy_core else contextlib.nullcontext()


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _load(
    server: ServerProcess,
    args: argparse.Namespace,
    concurrency: int,
    requests: int,
    *,
    warm_up: bool = True,
    first_prompt: int = 0,
) -> LevelResult:
    """`requests` requests at `concurrency` against one server, with the run's token and time limits."""
    return await run_level(
        server.spec.api,
        server.base_url,
        PROMPTS,
        concurrency=concurrency,
        requests=requests,
        max_tokens=args.max_tokens,
        request_timeout=args.request_timeout,
        level_timeout=args.level_timeout,
        warm_up=warm_up,
        first_prompt=first_prompt,
    )


async def _measure(server: ServerProcess, args: argparse.Namespace, levels: list[LevelResult]) -> None:
    # Levels are appended as they finish, so that an interrupted run still reports the completed ones.
    for concurrency in args.concurrency:
        requests = requests_for(concurrency, args)
        _progress(f"[{server.spec.key}] concurrency {concurrency}: warm-up + {requests} requests")
        level = await _load(server, args, concurrency, requests)
        _progress(
            f"[{server.spec.key}] concurrency {concurrency}: {level.tokens_per_s:.1f} tok/s, "
            f"{level.errors} errors, {level.wall_time:.1f} s"
        )
        levels.append(level)


def _ready(server: ServerProcess, args: argparse.Namespace) -> float:
    """Seconds the started server took to become ready; raises BenchError if it did not."""
    _progress(f"[{server.spec.key}] starting on {server.base_url} (log {server.log_path})")
    startup = server.wait_ready(args.startup_timeout)
    _progress(f"[{server.spec.key}] ready after {startup:.1f} s")
    return startup


def _not_measured(spec: ServerSpec, exc: BenchError) -> str:
    _progress(str(exc))
    return f"{spec.key}: not measured, {str(exc).splitlines()[0]}"


def _run_server(spec: ServerSpec, args: argparse.Namespace, log_dir: Path, runs: list[ServerRun]) -> None:
    levels: list[LevelResult] = []
    with ServerProcess(spec, log_dir / f"{spec.key}.log") as server:
        startup = _ready(server, args)
        load_before = os.getloadavg()[0]
        try:
            with _neighbour(args):
                asyncio.run(_measure(server, args, levels))
        finally:
            if levels:
                runs.append(ServerRun(spec.key, spec.label, spec.token_note, tuple(levels), startup, load_before))


async def _measure_in_turns(
    servers: list[ServerProcess], args: argparse.Namespace, blocks: dict[str, dict[int, list[LevelResult]]]
) -> None:
    """Each level in rounds: every server runs a block of its requests in turn, who goes first rotating by round.

    On a shared machine whose speed drifts over minutes, servers measured one after another also measure the
    drift; blocks that take turns share it, and each round gives a ratio of its own.
    """
    for concurrency in args.concurrency:
        sizes = block_sizes(requests_for(concurrency, args), args.rounds, concurrency)
        sent = 0
        for index, size in enumerate(sizes):
            order = servers[index % len(servers) :] + servers[: index % len(servers)]
            for server in order:
                level = await _load(server, args, concurrency, size, warm_up=index == 0, first_prompt=sent)
                _progress(
                    f"[{server.spec.key}] concurrency {concurrency}, round {index + 1}/{len(sizes)}: "
                    f"{level.tokens_per_s:.1f} tok/s, {level.errors} errors"
                )
                blocks[server.spec.key].setdefault(concurrency, []).append(level)
            sent += size


def _idle_cpu(servers: list[ServerProcess], seconds: float = 3.0) -> dict[str, float | None]:
    """Share of one core each server uses while nobody sends it anything (they wait while the others are measured)."""
    before = {server.spec.key: server.cpu_seconds() for server in servers}
    time.sleep(seconds)
    shares: dict[str, float | None] = {}
    for server in servers:
        start, end = before[server.spec.key], server.cpu_seconds()
        shares[server.spec.key] = None if start is None or end is None else (end - start) / seconds
    return shares


def _run_in_turns(
    specs: list[ServerSpec], args: argparse.Namespace, log_dir: Path, runs: list[ServerRun], notes: list[str]
) -> None:
    """Start every server, then measure them in turns; the per-round ratios go into `notes`."""
    blocks: dict[str, dict[int, list[LevelResult]]] = {}
    with contextlib.ExitStack() as stack:
        servers: list[ServerProcess] = []
        startups: dict[str, float] = {}
        for spec in specs:
            upstream = next((s.base_url for s in servers if s.spec.key == spec.upstream), None)
            if spec.upstream is not None and upstream is None:
                notes.append(f"{spec.key}: not measured, its upstream {spec.upstream} did not start")
                continue
            server = stack.enter_context(ServerProcess(spec, log_dir / f"{spec.key}.log", upstream))
            try:
                startups[spec.key] = _ready(server, args)
            except BenchError as exc:
                notes.append(_not_measured(spec, exc))
                server.stop()
                continue
            servers.append(server)
            blocks[spec.key] = {}
        if not servers:
            return
        idle = _idle_cpu(servers)
        notes.append(
            "servers measured in turns, all running; idle CPU of each while waiting: "
            + ", ".join(f"{key} {'?' if share is None else f'{share:.0%}'}" for key, share in idle.items())
        )
        load_before = os.getloadavg()[0]
        try:
            with _neighbour(args):
                asyncio.run(_measure_in_turns(servers, args, blocks))
        finally:
            for server in servers:
                key = server.spec.key
                levels = tuple(LevelResult.combined(parts) for parts in blocks[key].values())
                if levels:
                    spec = server.spec
                    runs.append(ServerRun(key, spec.label, spec.token_note, levels, startups[key], load_before))
            # Also when interrupted: the rounds completed so far still pair up.
            notes.extend(round_ratios(blocks))


def render(runs: Sequence[ServerRun], notes: Sequence[str], args: argparse.Namespace) -> str:
    per_level = ", ".join(f"c={c}: {requests_for(c, args)}" for c in args.concurrency)
    order = (
        "servers one after another"
        if args.rounds == 1
        else f"servers all running, each level in up to {args.rounds} rounds of blocks that the servers take in turn"
    )
    parts = [
        f"Model SmolLM2-135M-Instruct, {args.max_tokens} new tokens per request, greedy, "
        f"{len(PROMPTS)} prompts in turn, closed-loop clients, one warm-up request per level, {order}; "
        f"measured requests per level: {per_level}.",
        "",
        table(runs) if runs else "(no server produced results)",
    ]
    ratio_lines = ratios(runs)
    if ratio_lines:
        parts += [
            "",
            f"Output tokens/s of ours (MAX_BATCH_SIZE={OURS_BATCH}) relative to each other server:",
            *ratio_lines,
        ]
    through = gateway_lines(runs)
    if through:
        parts += [
            "",
            "Our gateway in front of vLLM against vLLM direct (same vLLM process, same load, in turns):",
            *through,
        ]
    note_lines = [*token_notes(runs), *(f"- {note}" for note in notes), *error_notes(runs)]
    if note_lines:
        parts += ["", "Notes:", *note_lines]
    return "\n".join(parts) + "\n"


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Handled like Ctrl-C: the `with` blocks stop the running server, and the completed levels are printed.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    data_dir: Path = args.data_dir.resolve()
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    notes: list[str] = []
    model_dir: Path | None = None
    if any(key in args.servers for key in ("ours", "ours-b1", "transformers", "vllm", "gateway")):
        _progress(f"preparing the model in {data_dir} (log {log_dir / 'prepare.log'})")
        try:
            model_dir = prepare_model(data_dir, log_dir / "prepare.log")
        except BenchError as exc:
            # Our server may be mid-rewrite and fail to import; the other servers only need the folder, which
            # an earlier run may already have written.
            model_dir = usable_model_folder(data_dir)
            reuse = f"; using the folder from an earlier run: {model_dir}" if model_dir else ""
            notes.append(f"{exc}{reuse}")
            _progress(notes[-1])
    specs, skipped = build_specs(args.servers, data_dir, model_dir, args.ours_api)
    notes += skipped

    runs: list[ServerRun] = []
    interrupted = False
    if args.busy_core:
        notes.append(
            f"a busy-loop process was pinned to core {max(os.sched_getaffinity(0))} while measuring "
            "(a noisy neighbour; not while the servers started)"
        )
    try:
        # A gateway needs its upstream running beside it: such runs are always in turns.
        if args.rounds > 1 or any(spec.upstream is not None for spec in specs):
            _run_in_turns(specs, args, log_dir, runs, notes)
        else:
            for spec in specs:
                try:
                    _run_server(spec, args, log_dir, runs)
                except BenchError as exc:
                    notes.append(_not_measured(spec, exc))
    except KeyboardInterrupt:
        interrupted = True
        notes.append("interrupted: results are partial")

    body = render(runs, notes, args)
    print(body, end="")
    if args.output is not None:
        document = "\n".join(["# LLM server benchmark", "", "Machine:", *machine_description(), "", body])
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(document)
        _progress(f"wrote {args.output}")
    if interrupted:
        return 130
    return 0 if runs else 1
