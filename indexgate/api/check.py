"""``GET /v1/check``: the OMS asks before every edit, so this path is kept lean.

The route is an ordinary FastAPI route (its parameters and answers are the OpenAPI
contract), and ``CheckFastPath`` - the outermost ASGI layer ``indexgate serve`` runs - answers
the same requests in front of FastAPI:
a well-formed, authorized ``GET /v1/check`` is parsed from the raw query string with the
route's own limits and answered by the same ``answer`` function, byte for byte; anything
else - a missing or bad parameter, a missing token - goes on to FastAPI, which answers 422
or 401 the documented way. That saves FastAPI's per-request middleware, routing,
dependency and validation work on the hot path (bench/RESULTS.md, HTTP suite); it caches
nothing: every answer is a fresh store read, through the same deadline as any other store
call. (Code that wants to see every check - metrics - hooks ``answer``, which both use.)
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from indexgate.api.context import (
    ERROR_RESPONSES,
    STORE_ERRORS,
    ApiContext,
    authorized,
    body_bytes,
    context,
    error_of,
    require_token,
)
from indexgate.api.metrics import CHECKS
from indexgate.api.models import MAX_ACTION, MAX_NAME
from indexgate.permissions import Decision, whole_branch

CHECK_PATH = "/v1/check"
_JSON = "application/json"
router = APIRouter()


async def answer(ctx: ApiContext, branch: str, resource_type: str | None, action: str) -> tuple[int, bytes]:
    """Status and JSON body of a check: 200 with the decision, or 503 when the store cannot answer."""
    try:
        decision = await ctx.calls.run(ctx.service.check, branch, whole_branch(resource_type), action)
    except STORE_ERRORS as exc:
        CHECKS.labels("unknown").inc()
        status, body = error_of(exc)
        return status, body_bytes(body)
    CHECKS.labels("allowed" if decision.allowed else "denied").inc()
    return 200, decision.model_dump_json().encode()


@router.get(CHECK_PATH, response_model=Decision, responses=ERROR_RESPONSES, dependencies=[Depends(require_token)],
            summary="May ACTION on RESOURCE_TYPE of BRANCH proceed now?")
async def check(
    ctx: Annotated[ApiContext, Depends(context)],
    branch: Annotated[str, Query(min_length=1, max_length=MAX_NAME)],
    resource_type: Annotated[str | None, Query(min_length=1, max_length=MAX_NAME,
                                               description="omitted (or `*`): the whole branch")] = None,
    action: Annotated[str, Query(min_length=1, max_length=MAX_ACTION,
                                 description="`read` and `draft` are always allowed")] = "write",
) -> Response:
    """``allowed`` with the blocking lock (holder, progress, ETA, health, deadlines),
    ``retry_after_s`` (a switch blackout: milliseconds; a known ETA; else null) and the branch
    aggregate's ``version``. 503 means unknown: treat it as not allowed."""
    status, body = await answer(ctx, branch, resource_type, action)
    return Response(body, status_code=status, media_type=_JSON)


_LIMITS = {"branch": MAX_NAME, "resource_type": MAX_NAME, "action": MAX_ACTION}


def parse_check_query(query_string: bytes) -> tuple[str, str | None, str] | None:
    """The check's parameters if they are exactly what the route accepts, else None (then
    FastAPI handles the request and explains what is wrong). Parsed like Starlette does."""
    found: dict[str, str] = {}
    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if key in _LIMITS:
            if key in found or not 1 <= len(value) <= _LIMITS[key]:
                return None
            found[key] = value
    if "branch" not in found:
        return None
    return found["branch"], found.get("resource_type"), found.get("action", "write")


class CheckFastPath:
    """ASGI wrapper answering well-formed, authorized ``GET /v1/check`` requests directly."""

    def __init__(self, app: ASGIApp, ctx: ApiContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != CHECK_PATH or scope["method"] != "GET":
            return await self.app(scope, receive, send)
        params = parse_check_query(scope["query_string"])
        auth = next((value for name, value in scope["headers"] if name == b"authorization"), None)
        if params is None or not authorized(self.ctx, auth):
            return await self.app(scope, receive, send)
        status, body = await answer(self.ctx, *params)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
