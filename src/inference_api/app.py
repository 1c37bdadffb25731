"""The composition root: `create_app(settings)` wires routers, middleware and the services' lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import Depends, FastAPI

from inference_api import __version__
from inference_api.api.body_limit import BodyLimitMiddleware, json_body_limit
from inference_api.api.errors import install_error_handlers
from inference_api.api.request_context import RequestContextMiddleware
from inference_api.api.security_headers import BrowserPages, install_browser_policy
from inference_api.auth.api_router import router as auth_router
from inference_api.chat.api_router import router as chat_router
from inference_api.documents.api_router import router as documents_router
from inference_api.documents.upload import upload_body_limit
from inference_api.health.api_router import router as health_router
from inference_api.inference.api_router import router as inference_router
from inference_api.model_management.api_router import router as models_router
from inference_api.observability.api_router import metrics_router
from inference_api.observability.api_router import router as observability_router
from inference_api.observability.http import ObservabilityMiddleware
from inference_api.observability.metrics import Metrics
from inference_api.openai_api.api_router import router as openai_router
from inference_api.openai_api.api_router import tokenize_router
from inference_api.quotas.api_router import router as usage_router
from inference_api.ratelimit.deps import RateLimitHeadersMiddleware, enforce_rate_limit
from inference_api.redaction import log_redaction
from inference_api.responses.api_router import router as responses_router
from inference_api.services import open_services
from inference_api.settings import Settings, load_settings
from inference_api.web.api_router import router as web_router
from inference_api.web.paths import ASSET_PREFIXES, DOCS_PATHS, PAGE_PATH


def create_app(settings: Settings | None = None, *, warm_up: bool = True) -> FastAPI:
    """Build the app. Services are made in the lifespan, so importing or creating the app loads nothing."""
    settings = settings or load_settings()
    # Made here, not in the lifespan: the middleware that feeds it is built before the lifespan runs.
    metrics = Metrics(
        default_model=(settings.default_model, settings.default_version), queue_capacity=settings.max_queue
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            # The app's typed state: each feature's dependencies read it (api/state.py).
            app.state.services = await open_services(settings, metrics, stack, warm_up=warm_up)
            yield

    app = FastAPI(
        title="inference-api",
        version=__version__,
        description="Serves large language models: inference, model management, health.",
        lifespan=log_redaction(settings, lifespan),
        # /docs and /redoc come from web/, on local copies of Swagger UI and ReDoc instead of a CDN.
        docs_url=None,
        redoc_url=None,
        # Every route, including those added later, counts against its caller's rate limits.
        dependencies=[Depends(enforce_rate_limit)],
    )
    # Innermost first: body caps inside the request id, the HTTP metrics outside it (they see the 500
    # envelope), the rate-limit headers on every answer, CORS and the security headers outermost.
    uploads = {"/upload": upload_body_limit(settings)}
    app.add_middleware(BodyLimitMiddleware, default=json_body_limit(settings), by_path=uploads)
    app.add_middleware(RequestContextMiddleware)
    app.add_middleware(RateLimitHeadersMiddleware)
    # Scrapes are not requests anyone made of the service: they stay out of its own figures.
    scrapes = frozenset({settings.metrics_path} if settings.prometheus_enabled else ())
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, skip_paths=scrapes)
    pages = BrowserPages(PAGE_PATH, DOCS_PATHS[0], DOCS_PATHS[1], ASSET_PREFIXES)
    install_browser_policy(app, settings, pages)
    install_error_handlers(app)
    routers = [health_router, inference_router, models_router, chat_router, documents_router]
    routers += [auth_router, usage_router, observability_router, openai_router, tokenize_router, responses_router]
    routers.append(web_router)
    if settings.prometheus_enabled:
        routers.append(metrics_router(settings.metrics_path))
    for router in routers:
        app.include_router(router)
    return app
