"""The review dashboard's web app: the hub, the routers, the guard every request passes, and serving it.

The dashboard is a web page to watch a run live, listen to its takes, flag, review, regenerate
and sync with the files.

It never writes the state. It reads the dataset's files (the loader every reader uses), keeps
its copy current from the daemon's change events, and sends every action to the daemon; the
page says an action is done only once the daemon answered, which it does once the change is
durable. It starts whether or not the daemon runs and follows it through restarts.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import api, routes
from .auth import refusal
from .errors import ActionError, error
from .hub import Hub, Settings
from .query import QueryError

log = logging.getLogger("statesvc.dashboard")


# ---- the web application ------------------------------------------------------------------------
def create_app(settings: Settings) -> FastAPI:
    """The page's app: the hub, its routers, the guard every request passes, errors as JSON."""
    hub = Hub(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await hub.start()
        yield
        await hub.stop()

    app = FastAPI(title="statesvc dashboard", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.hub = hub
    app.state.csrf = csrf = secrets.token_urlsafe(24)

    @app.middleware("http")
    async def guard(request: Request, call_next):  # noqa: ANN202
        try:
            refused = refusal(request, settings.host, settings.token, csrf)
            if isinstance(refused, Response):
                return refused
            return await call_next(request)
        except Exception as exc:  # nothing a browser sends may take the server down
            log.exception("request %s %s failed", request.method, request.url.path)
            return error(500, f"internal error: {type(exc).__name__}")

    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ActionError, _action_error)
    app.add_exception_handler(QueryError, _query_error)
    app.include_router(routes.router)
    app.include_router(api.router)
    return app


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error(exc.status_code, str(exc.detail))


async def _action_error(request: Request, exc: ActionError) -> JSONResponse:
    return error(exc.status, str(exc))


async def _query_error(request: Request, exc: QueryError) -> JSONResponse:
    return error(400, str(exc))


def serve(settings: Settings) -> None:
    """Serve until stopped. The caller (the CLI) has refused a host that is not loopback without a
    token, and said where the page is."""
    import uvicorn
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=2)

