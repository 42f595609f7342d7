"""The app factory: ``create_api(settings)`` builds the FastAPI app ``indexgate serve`` runs.

Routes live in routers (``health``, ``check``, ``reads``, the change stream here), so more
can be added to the app this returns (``app.include_router(...)``) before it is served.
Everything the routes share is one ``ApiContext`` on ``app.state.indexgate``; the change
feed (a kombu consumer thread) starts with the app's lifespan and stops with it.

The edge imports the core (service, store, settings); nothing in the core imports it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexgate import __version__
from indexgate.api import board, check, health, metrics, reads
from indexgate.api.metrics import store_error_seen
from indexgate.api.overview import Watch
from indexgate.api.calls import StoreCalls, api_settings
from indexgate.api.changes import ChangeFeed, Hub
from indexgate.api.context import (
    NOT_FOUND_ERRORS,
    STORE_ERRORS,
    UNAUTHORIZED_BODY,
    ApiContext,
    Unauthorized,
    context,
    error_of,
    require_token,
)
from indexgate.api.models import ErrorBody, ErrorCode
from indexgate.service import Service
from indexgate.settings import Settings

DESCRIPTION = """indexgate's HTTP API: may the OMS write resource type R on branch B now?

`GET /v1/check` answers from the store at this instant; 503 means *unknown* (the store is
unreachable, locked, not initialized, or slower than `INDEXGATE_API_STORE_TIMEOUT_S`) and
must be treated as not allowed. When `INDEXGATE_API_TOKEN` is set, every endpoint but
`/healthz`, `/readyz` and `/metrics` requires it as a bearer token."""


def create_api(settings: Settings | None = None, service: Service | None = None) -> FastAPI:
    """The API over ``settings`` (default: the environment, refused if misconfigured)."""
    settings = api_settings(settings or Settings.from_env())
    ctx = ApiContext(settings=settings, service=service or Service.from_settings(settings),
                     calls=StoreCalls(settings.api_store_timeout_s, on_error=store_error_seen), hub=Hub())
    watch = Watch(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        feed = ChangeFeed(settings, on_change=_on_loop(loop, ctx.hub.changed), on_state=_on_loop(loop, ctx.hub.state))
        feed.start()
        try:
            yield
        finally:
            ctx.hub.state(False, "the API is stopping")
            await asyncio.to_thread(feed.stop)
            ctx.calls.close()
            ctx.service.store.close()
            await asyncio.to_thread(watch.close)

    app = FastAPI(title="indexgate", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.indexgate = ctx
    app.state.watch = watch  # the overview behind /metrics and the board
    for router in (health.router, check.router, reads.router, metrics.router, board.router):
        app.include_router(router)
    _add_changes_and_schema(app)
    _add_error_handlers(app)
    return app


def served_app(app: FastAPI) -> check.CheckFastPath:
    """What ``indexgate serve`` runs: ``app`` behind the lean check path (outermost, so a
    check skips every FastAPI and Starlette layer; everything else, lifespan included, goes
    on to ``app``)."""
    return check.CheckFastPath(app, app.state.indexgate)


def _on_loop(loop: asyncio.AbstractEventLoop, fn: Callable) -> Callable:
    """``fn`` called on ``loop`` from the feed's thread (dropped once the loop is closed)."""

    def call(*args: object) -> None:
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed while the feed was stopping
            pass

    return call


def _add_changes_and_schema(app: FastAPI) -> None:
    @app.get("/v1/changes", response_class=EventSourceResponse, dependencies=[Depends(require_token)],
             responses={401: {"model": ErrorBody}}, summary="Branch invalidations for client caches (SSE)")
    async def changes(ctx: Annotated[ApiContext, Depends(context)]) -> AsyncIterator[ServerSentEvent]:
        """`ready` (the server's subscription to the outgoing exchange is up), then
        `invalidate` `{"branch": B}` per announced change (`null` = every branch), a `: ping`
        comment every 2 s, and `down` before the stream ends when the subscription is lost.
        A client caches nothing unless it has had `ready` and hears from the stream."""
        async for event in ctx.hub.stream():
            yield event

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_token)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())


def _add_error_handlers(app: FastAPI) -> None:
    async def indexgate_error(_: Request, exc: Exception) -> JSONResponse:
        status, body = error_of(exc)  # type: ignore[arg-type]
        return JSONResponse(body.model_dump(mode="json"), status_code=status)

    async def unauthorized(_: Request, __: Exception) -> JSONResponse:
        return JSONResponse(UNAUTHORIZED_BODY.model_dump(mode="json"), status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}.get(exc.status_code, ErrorCode.BAD_REQUEST)
        return JSONResponse(ErrorBody(error=code, detail=str(exc.detail)).model_dump(mode="json"),
                            status_code=exc.status_code, headers=exc.headers)

    for kind in (*STORE_ERRORS, *NOT_FOUND_ERRORS):
        app.add_exception_handler(kind, indexgate_error)
    app.add_exception_handler(Unauthorized, unauthorized)
    app.add_exception_handler(StarletteHTTPException, http_error)
