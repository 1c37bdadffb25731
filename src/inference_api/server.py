"""Running the app under uvicorn, with readiness that turns 503 the moment SIGTERM arrives."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import Iterator
from types import FrameType

import uvicorn
from fastapi import FastAPI

from inference_api.app import create_app
from inference_api.logs import configure_logging
from inference_api.services import Services
from inference_api.settings import Settings, load_settings


class DrainingServer(uvicorn.Server):
    """uvicorn alone keeps answering /ready 200 until every connection has closed, so a load balancer
    would go on sending traffic to a pod that is leaving; this one starts the engine's drain at once."""

    _loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            services = self._services()
            if services is not None and services.engine.cut_by_drain == 0:
                # uvicorn re-raises the SIGTERM it caught once it is done, so even a drain that answered
                # every request exited 143. Clean: exit 0. Requests cut by DRAIN_TIMEOUT keep the signal's.
                self._captured_signals.clear()

    def _services(self) -> Services | None:
        return getattr(getattr(self.config.app, "state", None), "services", None)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        services = self._services()
        if services is not None and self._loop is not None:
            # Signal handlers may run in the middle of the loop's own work: hand over, don't act here.
            drain = functools.partial(services.engine.begin_drain, services.settings.drain_timeout)
            self._loop.call_soon_threadsafe(drain)
        super().handle_exit(sig, frame)


def serve(settings: Settings) -> None:
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,  # the app writes its own access line, with the route, key name, model and timings
        # The engine answers what is left SHUTTING_DOWN at DRAIN_TIMEOUT (Engine.begin_drain); uvicorn's own
        # limit, after which it cancels handlers mid-answer, only backs that up.
        timeout_graceful_shutdown=int(settings.drain_timeout) + 5,
    )
    DrainingServer(config).run()


def worker_app() -> FastAPI:
    """The app for `uvicorn --factory inference_api.server:worker_app --workers N`: each worker process
    reads the settings and sets up logging (LOG_FORMAT) itself, as `inference-api serve` does."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
