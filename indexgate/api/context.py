"""What every route shares: the service, the store calls, the change hub, the token, and
how errors become answers.

Errors map by type, once: every ``StoreUnavailable`` (unreachable, locked, not initialized,
timed out) and a store ``ConfigError`` is 503 - "unknown", never a default; ``LockNotFound``
and ``InvalidRequest`` (no such shadow build) are 404; a missing or wrong token is 401.
"""

from __future__ import annotations

from dataclasses import dataclass
from secrets import compare_digest

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from indexgate.api.calls import StoreCalls
from indexgate.api.changes import Hub
from indexgate.api.models import ErrorBody, ErrorCode
from indexgate.errors import (
    ConfigError,
    IndexgateError,
    InvalidRequest,
    LockNotFound,
    StoreNotInitialized,
    StoreTimeout,
    StoreUnavailable,
)
from indexgate.service import Service
from indexgate.settings import Settings

STORE_ERRORS = (StoreUnavailable, ConfigError)  # the store cannot answer: 503
NOT_FOUND_ERRORS = (LockNotFound, InvalidRequest)
ERROR_RESPONSES: dict[int | str, dict] = {
    401: {"model": ErrorBody, "description": "INDEXGATE_API_TOKEN is set and the bearer token is missing or wrong"},
    503: {"model": ErrorBody, "description": "the store cannot answer (unreachable, locked, not initialized, "
                                             "or slower than INDEXGATE_API_STORE_TIMEOUT_S): unknown, never allowed"},
}
NOT_FOUND_RESPONSE: dict[int | str, dict] = {404: {"model": ErrorBody, "description": "no such object"}}


@dataclass
class ApiContext:
    settings: Settings
    service: Service
    calls: StoreCalls
    hub: Hub

    @property
    def token(self) -> bytes | None:
        secret = self.settings.api_token
        return secret.get_secret_value().encode() if secret else None


class Unauthorized(Exception):
    """The request lacks the configured bearer token."""


def authorized(ctx: ApiContext, authorization: bytes | None) -> bool:
    """Whether an ``Authorization`` header value carries the token (always, without one)."""
    token = ctx.token
    if token is None:
        return True
    scheme, _, given = (authorization or b"").partition(b" ")
    return scheme.lower() == b"bearer" and compare_digest(given.strip(), token)


def context(request: Request) -> ApiContext:
    return request.app.state.indexgate


_bearer = HTTPBearer(auto_error=False, description="INDEXGATE_API_TOKEN, required when the server sets one")


async def require_token(request: Request, _: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    """Dependency of every route but ``/healthz``, ``/readyz`` and ``/metrics`` (the board checks
    the token itself, also as a basic-auth password)."""
    header = request.headers.get("authorization")
    if not authorized(context(request), header.encode("latin-1") if header is not None else None):
        raise Unauthorized()


def error_of(exc: IndexgateError) -> tuple[int, ErrorBody]:
    """The status and body an indexgate error answers with."""
    if isinstance(exc, NOT_FOUND_ERRORS):
        return 404, ErrorBody(error=ErrorCode.NOT_FOUND, detail=str(exc))
    if isinstance(exc, StoreTimeout):
        code = ErrorCode.STORE_TIMEOUT
    elif isinstance(exc, StoreNotInitialized):
        code = ErrorCode.STORE_NOT_INITIALIZED
    else:
        code = ErrorCode.STORE_UNAVAILABLE
    return 503, ErrorBody(error=code, detail=f"store unreachable: {exc}")


def body_bytes(body: ErrorBody) -> bytes:
    return body.model_dump_json().encode()


UNAUTHORIZED_BODY = ErrorBody(error=ErrorCode.UNAUTHORIZED,
                              detail="this indexgate API requires its token: send `Authorization: Bearer "
                                     "<INDEXGATE_API_TOKEN>`")
