"""GET /compare: a few jobs side by side."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import Field

from server.api.deps import INT64_MAX, SessionDep
from server.api.openapi import ANY, error_responses
from server.services import compare as service
from server.services.compare import MAX_IDS, ComparePublic

router = APIRouter(tags=["jobs"])

JobId = Annotated[int, Field(ge=1, le=INT64_MAX)]


@router.get("/compare", response_model=ComparePublic, responses=error_responses(*ANY, 404, 422))
def compare_jobs(
    session: SessionDep,
    ids: Annotated[
        list[JobId],
        Query(
            min_length=1,
            max_length=MAX_IDS,
            description=f"the jobs to compare, 1 to {MAX_IDS}, as ids=1&ids=2; answered in this order",
        ),
    ],
) -> ComparePublic:
    """Each job's final loss and eval loss, steps, tokens/s, peak VRAM, wall time, GPU-hours and result."""
    return service.compare_jobs(session, ids)
