"""Parsing uploads off the serving path, in a child process bounded in time and memory.

Parsers can be driven into work out of all proportion to a file's size (a one-line CSV of 80,000
columns took 64 s in unstructured's `partition_csv`, growing with the square of the columns; a DOCX
whose ZIP headers lie inflates far past what they claim). Run in the server's own process, that work
holds the GIL, starves generation and grows the server's memory, and nothing can stop a thread. So
each parse runs in a process of its own: forked from multiprocessing's fork server, which imported the
parsers once; capped in address space (RLIMIT_AS) and CPU time (RLIMIT_CPU); killed when its wall
clock runs out or when the request waiting for it is cancelled (the client went away). A refusal is
the spec's 400 DOCUMENT_PROCESSING_ERROR naming the limit that was hit.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import math
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, cast

from inference_api.documents.parsing import (
    DocumentParser,
    FileType,
    ParsedDocument,
    sanitize_filename,
)
from inference_api.errors import ErrorCode, ServiceError

logger = logging.getLogger(__name__)

# The child's side, named rather than imported: importing it imports the parsers, which this process never does.
_WORKER_MODULE = "inference_api.documents.sandbox_worker"

DEFAULT_PARSE_TIMEOUT = 8.0
DEFAULT_PARSE_MEMORY_BYTES = 256 * 1024 * 1024
# Parses at once per server process: each may take its whole memory budget and a core.
DEFAULT_PARSE_CONCURRENCY = 2


@dataclass(frozen=True)
class ParseLimits:
    timeout: float = DEFAULT_PARSE_TIMEOUT  # wall-clock seconds of one parse (PARSE_TIMEOUT)
    memory_bytes: int = DEFAULT_PARSE_MEMORY_BYTES  # memory one parse may add (PARSE_MEMORY_MB)
    concurrency: int = DEFAULT_PARSE_CONCURRENCY


class ParseSandbox:
    """`parse` as DocumentParser's, but in a bounded child process; awaitable and cancellable."""

    def __init__(self, parser: DocumentParser | None = None, limits: ParseLimits | None = None) -> None:
        self.limits = limits or ParseLimits()
        self.max_unpacked_bytes = (parser or DocumentParser()).max_unpacked_bytes
        # The fork server is started by the first parse; its children inherit the modules it preloaded.
        # Forking the serving process itself instead would copy its threads' locks mid-use (torch, asyncio).
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload([_WORKER_MODULE])
        self._slots = asyncio.Semaphore(self.limits.concurrency)
        self.children: set[int] = set()  # pids of the parses running now
        self.parsed = 0
        self.refused: dict[str, int] = {"timeout": 0, "memory": 0, "crashed": 0}

    def warm_up(self) -> None:
        """Start the fork server now (it imports the parsers: seconds), rather than in the first upload."""
        from multiprocessing import forkserver

        forkserver.ensure_running()

    async def parse(self, filename: str, data: bytes) -> ParsedDocument:
        """The file's text, or the ServiceError its upload should get; the child never outlives this call."""
        display = sanitize_filename(filename)
        async with self._slots:
            return await self._parse(display, data)

    async def _parse(self, display: str, data: bytes) -> ParsedDocument:
        limits = self.limits
        receiver, sender = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_run_in_child,
            args=(sender, display, data),
            kwargs={
                "memory_bytes": limits.memory_bytes,
                "cpu_seconds": max(1, math.ceil(limits.timeout)) + 1,
                "max_unpacked": self.max_unpacked_bytes,
            },
            name="document-parse",
            daemon=True,
        )
        reply: object = None
        timed_out = False
        try:
            # Starting talks to the fork server (and starts it, the first time: seconds): not on the loop,
            # and not on the parse's clock.
            await asyncio.to_thread(process.start)
            started = time.monotonic()
            if process.pid is not None:
                self.children.add(process.pid)
            sender.close()  # the child's end: once the child exits, reading sees EOF rather than waiting
            remaining = limits.timeout - (time.monotonic() - started)
            with contextlib.suppress(EOFError):  # EOF: the child died without a word (a limit, or a crash)
                reply = await asyncio.wait_for(_receive(receiver), timeout=max(remaining, 0.01))
        except TimeoutError:
            timed_out = True
        finally:
            self.children.discard(process.pid or 0)
            exitcode = _stop(process)
            receiver.close()
            sender.close()
        return self._outcome(display, reply, exitcode, timed_out)

    def _outcome(self, display: str, reply: object, exitcode: int | None, timed_out: bool) -> ParsedDocument:
        kind = reply[0] if isinstance(reply, tuple) and reply else None
        if kind == "ok":
            assert isinstance(reply, tuple)
            _, file_type, text, page_starts, places, peak = reply
            self.parsed += 1
            logger.debug("parsed %r in a sandbox (peak RSS %d MB)", display, int(peak) // (1024 * 1024))
            return ParsedDocument(
                FileType(file_type),
                str(text),
                tuple(cast(tuple[int, ...], page_starts)),
                tuple(cast(tuple[tuple[int, str], ...], places)),
            )
        if kind == "refused":
            assert isinstance(reply, tuple)
            _, code, message = reply
            raise ServiceError(ErrorCode(str(code)), str(message))
        if timed_out:
            self.refused["timeout"] += 1
            logger.warning("parsing %r passed the %g s limit; stopped", display, self.limits.timeout)
            raise ServiceError(
                ErrorCode.DOCUMENT_PROCESSING_ERROR,
                f"{_quote(display)} took longer than the {self.limits.timeout:g} s parsing limit (PARSE_TIMEOUT); "
                "it was not stored",
            )
        if exitcode in (-signal.SIGXCPU, -signal.SIGKILL):
            # The kernel's CPU-time limit (SIGXCPU, then SIGKILL): threads can spend it faster than the clock.
            self.refused["timeout"] += 1
            logger.warning("parsing %r passed its CPU time limit; stopped (exit %s)", display, exitcode)
            raise ServiceError(
                ErrorCode.DOCUMENT_PROCESSING_ERROR,
                f"{_quote(display)} used more CPU time than the {self.limits.timeout:g} s parsing limit allows "
                "(PARSE_TIMEOUT); it was not stored",
            )
        if kind == "memory":
            self.refused["memory"] += 1
            limit_mb = self.limits.memory_bytes // (1024 * 1024)
            logger.warning("parsing %r needed more than %d MB; stopped", display, limit_mb)
            raise ServiceError(
                ErrorCode.DOCUMENT_PROCESSING_ERROR,
                f"{_quote(display)} needed more than the {limit_mb} MB parsing memory limit (PARSE_MEMORY_MB); "
                "it was not stored",
            )
        self.refused["crashed"] += 1
        logger.warning("the parser of %r ended without an answer (exit code %s)", display, exitcode)
        raise ServiceError(
            ErrorCode.DOCUMENT_PROCESSING_ERROR, f"{_quote(display)} could not be parsed (the parser stopped)"
        )


def _run_in_child(*args: Any, **kwargs: Any) -> None:
    """The child's entry point: the worker module is already imported there, from the fork server."""
    worker = importlib.import_module(_WORKER_MODULE)
    worker.run(*args, **kwargs)


async def _receive(connection: Connection) -> object:
    """The child's one message, waited for on the event loop (no thread held while the child works)."""
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()
    fd = connection.fileno()

    def wake() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await readable
    finally:
        loop.remove_reader(fd)
    # uvloop leaves a watched descriptor non-blocking: recv of a text larger than the pipe's buffer then
    # failed with EAGAIN (a 500) instead of waiting for the rest.
    os.set_blocking(fd, True)
    # Readable means the message has begun (or EOF): the rest follows at once, a large text in a thread.
    return await asyncio.to_thread(connection.recv)


def _stop(process: BaseProcess) -> int | None:
    """Kill the child if it still runs and reap it (a parse that is over leaves no process behind); its exit code."""
    if process.pid is None:
        return None
    if process.exitcode is None:
        with contextlib.suppress(Exception):
            process.kill()
    process.join(timeout=5)  # SIGKILL cannot be ignored: this takes milliseconds
    exitcode = process.exitcode
    with contextlib.suppress(Exception):
        process.close()
    return exitcode


def _quote(display: str) -> str:
    return repr(display if len(display) <= 80 else display[:77] + "...")
