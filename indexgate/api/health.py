"""``/healthz`` (the process answers) and ``/readyz`` (the store answers and is initialized,
the broker subscription is up): no token, for orchestrators."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from indexgate.api.context import STORE_ERRORS, ApiContext, context
from indexgate.api.models import Liveness, Probe, Readiness
from indexgate.settings import sanitized_url

router = APIRouter()


@router.get("/healthz", response_model=Liveness, summary="The process answers")
async def healthz() -> Liveness:
    return Liveness()


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness, "description": "not ready"}},
            summary="The store answers and is initialized; the broker is reachable")
async def readyz(ctx: Annotated[ApiContext, Depends(context)]) -> JSONResponse:
    store = await _store_probe(ctx)
    broker = Probe(ok=ctx.hub.up, detail=ctx.hub.detail)
    ready = Readiness(ready=store.ok and broker.ok, store=store, broker=broker)
    return JSONResponse(ready.model_dump(mode="json"), status_code=200 if ready.ready else 503)


async def _store_probe(ctx: ApiContext) -> Probe:
    try:
        await ctx.calls.run(ctx.service.store.ping)
    except STORE_ERRORS as exc:
        return Probe(ok=False, detail=str(exc))
    return Probe(ok=True, detail=f"{sanitized_url(ctx.settings.resolved_store_url)} answers and is initialized")
