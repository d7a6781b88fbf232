"""The REST API, ``/api/v1`` (OpenAPI at ``/api/docs``): everything the console shows and
does. Reading needs a viewer, acting an operator, the configuration and the audit trail
an admin; every action (and every refused one) is written to the audit trail."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from node import __version__
from node.config import masked
from node.http import multipart
from node.http.auth import Principal
from node.http.context import (
    Console,
    Done,
    destinations,
    perform,
    principal_of,
    read_upload,
    require,
)
from node.store.records import SeriesState
from node.workflow.operations import OperationRefused
from node.workflow.remote import HandBackRefused, accept_results

router = APIRouter(prefix="/api/v1")

Viewer = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]
Admin = Annotated[Principal, Depends(require("admin"))]
Offset = Annotated[int, Query(ge=0)]
Limit = Annotated[int, Query(ge=1, le=500)]


def console(request: Request) -> Console:
    ctx: Console = request.app.state.console
    return ctx


Ctx = Annotated[Console, Depends(console)]


def _act(
    ctx: Console, request: Request, who: Principal, action: str, target: str,
    run: Callable[[], tuple[int, str]],
) -> Done:  # fmt: skip
    try:
        return perform(ctx, request, who, action, target, run)
    except OperationRefused as exc:
        raise HTTPException(409, str(exc)) from None


# -- reading ---------------------------------------------------------------------------


@router.get("/me", summary="Who is asking")
def me(who: Viewer) -> dict[str, str]:
    return {"name": who.name, "role": who.role, "via": who.via}


@router.get("/summary", summary="Counts for the dashboard")
def summary(ctx: Ctx, _: Viewer) -> dict[str, Any]:
    counts = ctx.repository.counts()
    ready, why = ctx.readiness()
    return {
        "version": __version__,
        "ae_title": ctx.config.dicom.ae_title,
        "ready": ready,
        "not_ready": why,
        "warnings": ctx.warnings(),
        "disk_free_bytes": ctx.storage.free_bytes(),
        "models": ctx.models(),
        **asdict(counts),
    }


@router.get("/status", summary="What `lge-node status` shows: recent series, jobs, sends, events")
def status(ctx: Ctx, _: Viewer, limit: Limit = 20) -> dict[str, Any]:
    return {**asdict(ctx.repository.snapshot(limit)), "warnings": ctx.warnings()}


@router.get("/series", summary="Received series, newest first")
def series_list(
    ctx: Ctx, _: Viewer, state: SeriesState | None = None, search: str = "",
    offset: Offset = 0, limit: Limit = 50,
) -> dict[str, Any]:  # fmt: skip
    return asdict(ctx.repository.series_page(state, search.strip(), offset, limit))


@router.get("/series/{series_uid}", summary="A series: study, jobs, results, metrics")
def series_detail(ctx: Ctx, _: Viewer, series_uid: str) -> dict[str, Any]:
    detail = ctx.repository.series_detail(series_uid)
    if detail is None:
        raise HTTPException(404, f"no series {series_uid}")
    doc = asdict(detail)
    done = next((j for j in detail.jobs if j.state == "done" and j.metrics), None)
    doc["metrics"] = json.loads(done.metrics) if done else None
    for job in doc["jobs"]:
        job.pop("metrics", None)  # the newest is above; the rest on /jobs/{id}
    return doc


@router.get("/series/{series_uid}/dry-run", summary="The selection rules on a held series")
def dry_run_series(ctx: Ctx, _: Viewer, series_uid: str) -> dict[str, Any]:
    try:
        return asdict(ctx.operations.dry_run_series(series_uid))
    except OperationRefused as exc:
        raise HTTPException(404, str(exc)) from None


@router.post("/rules/dry-run", summary="The selection rules on an uploaded DICOM header")
async def dry_run_header(
    ctx: Ctx, _: Viewer, file: Annotated[UploadFile, File(description="one DICOM instance")]
) -> dict[str, Any]:
    try:
        data = await read_upload(file, ctx.config.storage.max_instance_mb)
        return asdict(ctx.operations.dry_run_header(data))
    except OperationRefused as exc:
        raise HTTPException(422, str(exc)) from None


@router.get("/jobs", summary="Jobs, newest first")
def jobs(
    ctx: Ctx, _: Viewer, state: str | None = None, offset: Offset = 0, limit: Limit = 50
) -> dict[str, Any]:
    return asdict(ctx.repository.jobs_page(state, offset, limit))


@router.get("/jobs/{job_id}", summary="One job, with its metrics")
def job(ctx: Ctx, _: Viewer, job_id: int) -> dict[str, Any]:
    try:
        record = ctx.repository.job(job_id)
    except KeyError:
        raise HTTPException(404, f"no job {job_id}") from None
    doc = asdict(record)
    doc["metrics"] = json.loads(record.metrics) if record.metrics else None
    return doc


@router.get("/destinations", summary="Destinations and their outbox")
def destination_list(ctx: Ctx, _: Viewer) -> list[dict[str, Any]]:
    return [asdict(d) for d in destinations(ctx)]


@router.get("/events", summary="Recent operator events")
def events(ctx: Ctx, _: Viewer, limit: Limit = 50) -> list[dict[str, Any]]:
    return [asdict(e) for e in ctx.repository.snapshot(limit=limit).events]


@router.get("/audit", summary="Who did what (admin)")
def audit(ctx: Ctx, _: Admin, offset: Offset = 0, limit: Limit = 50) -> dict[str, Any]:
    return asdict(ctx.repository.audit_page(offset, limit))


@router.get("/config", summary="The running configuration, secrets masked (admin)")
def config(ctx: Ctx, _: Admin) -> dict[str, Any]:
    return masked(ctx.config.model_dump(mode="json"))


# -- acting ----------------------------------------------------------------------------


@router.post("/series/{series_uid}/rerun", summary="Run a done, failed or skipped series again")
def rerun(ctx: Ctx, request: Request, who: Operator, series_uid: str) -> Done:
    def run() -> tuple[int, str]:
        job_id = ctx.operations.rerun(series_uid)
        return job_id, f"job {job_id} queued"

    return _act(ctx, request, who, "rerun", series_uid, run)


@router.post("/jobs/{job_id}/resend", summary="Send a job's results again")
def resend(
    ctx: Ctx, request: Request, who: Operator, job_id: int, destination: str | None = None
) -> Done:
    def run() -> tuple[int, str]:
        n = ctx.operations.resend(job_id, destination)
        return n, f"{n} sends queued" + (f" to {destination}" if destination else "")

    return _act(ctx, request, who, "resend", f"job {job_id}", run)


@router.post("/destinations/{name}/retry", summary="Retry a destination's pending sends now")
def retry(ctx: Ctx, request: Request, who: Operator, name: str) -> Done:
    def run() -> tuple[int, str]:
        n = ctx.operations.retry(name)
        return n, f"{n} pending sends due now"

    return _act(ctx, request, who, "retry", name, run)


# -- workers on other hosts (cluster) ----------------------------------------------------


@router.post("/jobs/{job_id}/results", summary="A worker hands back a running job's results")
async def hand_back(
    ctx: Ctx, request: Request, who: Operator, job_id: int, seconds: float = 0.0
) -> dict[str, Any]:
    """The body is multipart/related, one part per file, named by its Content-Location
    relative to the results folder ("seg.dcm", "overlay/001.dcm"), DICOM objects in the
    order they are to be sent. The node keeps them, finishes the job and sends them to
    its destinations (`node.workflow.remote.accept_results`)."""
    limit = int(ctx.config.http.max_stow_mb * 2**20)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"results over http.max_stow_mb ({limit >> 20} MB)")
    try:
        parts = multipart.split(bytes(body), request.headers.get("content-type", ""))
    except multipart.MultipartError as exc:
        raise HTTPException(400, f"not a valid multipart/related body: {exc}") from None
    files = [(h.get("content-location", ""), data) for h, data in parts]
    address = request.client.host if request.client else ""
    try:
        folder = await run_in_threadpool(
            accept_results, ctx.config, ctx.storage, ctx.repository, job_id, files, seconds
        )
    except HandBackRefused as exc:
        ctx.repository.record_audit(
            who.name, who.role, "hand_back", f"job {job_id}", "refused", str(exc), address
        )
        raise HTTPException(exc.status, str(exc)) from None
    ctx.repository.record_audit(
        who.name, who.role, "hand_back", f"job {job_id}", "ok", f"{len(files)} files", address
    )
    ctx.operations.wake_dispatch()
    return {"results_dir": str(folder), "files": len(files)}


@router.get("/jobs/{job_id}/results/{name:path}", summary="A file of a job's results")
def result_file(ctx: Ctx, _: Viewer, job_id: int, name: str) -> FileResponse:
    try:
        record = ctx.repository.job(job_id)
    except KeyError:
        raise HTTPException(404, f"no job {job_id}") from None
    if not record.results_dir:
        raise HTTPException(404, f"job {job_id} has no results")
    try:
        path = ctx.storage.result_file(Path(record.results_dir), name)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    if not path.is_file():
        raise HTTPException(404, f"job {job_id} has no result {name!r} on this node")
    return FileResponse(path, media_type="application/octet-stream")


__all__ = ["principal_of", "router"]
