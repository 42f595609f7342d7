"""Read endpoints for tools and dashboards: locks, shadow builds, the active index, audit,
dead letters. Every one reads the store through the deadline (503 when it cannot answer)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from indexgate.api.context import ERROR_RESPONSES, NOT_FOUND_RESPONSE, ApiContext, context, require_token
from indexgate.api.models import MAX_LIMIT, MAX_NAME, ActiveIndex, LockSummary, ShadowStatus
from indexgate.permissions import LockStatus
from indexgate.schemas.records import AuditEntry, DeadLetter
from indexgate.shadow_service import status_json

router = APIRouter(prefix="/v1", dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)
Ctx = Annotated[ApiContext, Depends(context)]
Name = Annotated[str, Query(min_length=1, max_length=MAX_NAME)]
OptionalBranch = Annotated[str | None, Query(min_length=1, max_length=MAX_NAME, description="only this branch")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Ref = Annotated[str, Path(min_length=1, max_length=MAX_NAME)]


@router.get("/locks", response_model=list[LockStatus], summary="Every stored lock with its health")
async def locks(ctx: Ctx, branch: OptionalBranch = None) -> list[LockStatus]:
    """Dead locks appear (``in_force: false``, ``death_reason``) until a sweep removes them."""
    return [LockStatus.of(v) for v in await ctx.calls.run(ctx.service.list_locks, branch)]


@router.get("/locks/summary", response_model=LockSummary, summary="Counts of locks by health")
async def locks_summary(ctx: Ctx) -> LockSummary:
    return LockSummary(**await ctx.calls.run(ctx.service.summary))


@router.get("/locks/{lock_id}", response_model=LockStatus, responses=NOT_FOUND_RESPONSE,
            summary="One lock: its fields, health and deadlines")
async def lock(ctx: Ctx, lock_id: Ref) -> LockStatus:
    return LockStatus.of(await ctx.calls.run(ctx.service.show, lock_id))


@router.get("/shadows", response_model=list[ShadowStatus], summary="Shadow builds and their states")
async def shadows(ctx: Ctx, branch: OptionalBranch = None) -> list[ShadowStatus]:
    builds = await ctx.calls.run(ctx.service.shadows.builds)
    return [ShadowStatus(**status_json(b, state)) for b, state in builds if branch is None or b.branch == branch]


@router.get("/shadows/{shadow_id}", response_model=ShadowStatus, responses=NOT_FOUND_RESPONSE,
            summary="One shadow build, by shadow index id or job id")
async def shadow(ctx: Ctx, shadow_id: Ref) -> ShadowStatus:
    return ShadowStatus(**await ctx.calls.run(ctx.service.shadows.status, shadow_id))


@router.get("/index", response_model=ActiveIndex, summary="The active index readers use")
async def index(ctx: Ctx, branch: Name, index_type: Name) -> ActiveIndex:
    pointer = await ctx.calls.run(ctx.service.shadows.current, branch, index_type)
    return ActiveIndex(branch=branch, index_type=index_type, active=pointer)


@router.get("/audit", response_model=list[AuditEntry], summary="The audit trail, newest first")
async def audit(ctx: Ctx, branch: OptionalBranch = None, limit: Limit = 50) -> list[AuditEntry]:
    return await ctx.calls.run(ctx.service.store.audit, limit, branch)


@router.get("/deadletters", response_model=list[DeadLetter], summary="Messages the workers could not use")
async def deadletters(ctx: Ctx, limit: Limit = 50) -> list[DeadLetter]:
    return await ctx.calls.run(ctx.service.store.dead_letters, limit)
