"""The child side of the parse sandbox (documents/sandbox.py): what runs in the process that parses one upload.

Importing this module imports unstructured and its partitioners (about 7 s on 2 cores): the sandbox has
the multiprocessing fork server import it once, so that each parse forks from a process that has them
already and starts in milliseconds, while the serving process never imports them at all.
"""

from __future__ import annotations

import contextlib
import resource
from multiprocessing.connection import Connection

import psutil

from inference_api.documents.parsing import DocumentParser, warm_up_partitioners
from inference_api.errors import ServiceError

# In the fork server only, where it runs once; a failure here just leaves the import to the first parse.
with contextlib.suppress(Exception):
    warm_up_partitioners()

# Messages to the parent: ("ok", file_type, text, page_starts, places, peak_rss), ("refused", code, message),
# ("memory",).
Reply = tuple[object, ...]


def run(
    connection: Connection, filename: str, data: bytes, *, memory_bytes: int, cpu_seconds: int, max_unpacked: int
) -> None:
    """Parse one upload under limits and send the outcome; the parent kills this process past its wall clock."""
    # Address space, not resident memory, is what the kernel can cap: allowed is what the process maps
    # now (shared with the fork server) plus the parse's own budget.
    mapped = psutil.Process().memory_info().vms
    resource.setrlimit(resource.RLIMIT_AS, (mapped + memory_bytes, mapped + memory_bytes))
    # A backstop for the parent's wall-clock limit: CPU time past it ends the process (SIGXCPU, then SIGKILL).
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    reply: Reply
    try:
        parsed = DocumentParser(max_unpacked_bytes=max_unpacked).parse(filename, data)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        reply = ("ok", parsed.file_type.value, parsed.text, parsed.page_starts, parsed.places, peak)
    except ServiceError as exc:
        reply = ("refused", exc.code.value, exc.message)
    except MemoryError:
        reply = ("memory",)
    try:
        connection.send(reply)
    except MemoryError:
        connection.send(("memory",))  # the text itself was too large to send within the budget
    finally:
        connection.close()
