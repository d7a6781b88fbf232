"""The web console: server-rendered pages (Jinja2, no front-end build) over the same
index and operations as the REST API. A page without a session redirects to the login;
a page or action above the user's role answers 403 and is audited. Forms post only from
the console's own origin (and the session cookie is SameSite=Strict)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode, urlsplit

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.datastructures import UploadFile as StarletteUpload

from node import __version__
from node.config import masked
from node.http.auth import COOKIE, Principal, Throttled
from node.http.context import Console, destinations, perform, principal_of, read_upload
from node.store.records import SeriesState
from node.workflow.operations import OperationRefused

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.filters["when"] = lambda t: (
    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""
)
PAGE = 50


def _ctx(request: Request) -> Console:
    ctx: Console = request.app.state.console
    return ctx


def _page(request: Request, name: str, who: Principal, **values: Any) -> HTMLResponse:
    """A page; the notice of a redirected action comes in the query unless given."""
    notice = {
        "notice": request.query_params.get("notice", ""),
        "notice_error": request.query_params.get("error") == "1",
    }
    return templates.TemplateResponse(request, name, {"who": who, **notice, **values})


class PageRefusal(Exception):
    """Stands in for a page the user may not see: the login, or a 403 page (handled by
    `refusal_handler`, registered with the app)."""

    def __init__(self, response: Response) -> None:
        super().__init__()
        self.response = response


def refusal_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageRefusal)
    return exc.response


def page_user(role: str) -> Callable[[Request], Principal]:
    """A dependency: the logged-in user with ``role``, else the login page or an audited
    403 page."""

    def gate(request: Request) -> Principal:
        who = principal_of(request)
        if who is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise PageRefusal(RedirectResponse(f"/login?next={quote(target)}", status_code=303))
        if not who.may(role):
            _ctx(request).repository.record_audit(
                who.name, who.role, f"{request.method} {request.url.path}", "", "refused",
                f"needs role {role}", request.client.host if request.client else "",
            )  # fmt: skip
            message = f"This needs the {role} role; {who.name} is {who.role}."
            page = templates.TemplateResponse(
                request, "refused.html", {"who": who, "message": message}, status_code=403
            )
            raise PageRefusal(page)
        return who

    return gate


Viewer = Annotated[Principal, Depends(page_user("viewer"))]
Operator = Annotated[Principal, Depends(page_user("operator"))]
Admin = Annotated[Principal, Depends(page_user("admin"))]


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin") or request.headers.get("referer") or ""
    return bool(origin) and urlsplit(origin).netloc == request.url.netloc


def _action(
    request: Request, who: Principal, action: str, target: str,
    run: Callable[[], tuple[int, str]], back: str,
) -> Response:  # fmt: skip
    if not _same_origin(request):
        return HTMLResponse("cross-site form refused", status_code=403)
    try:
        done = perform(_ctx(request), request, who, action, target, run)
        query = urlencode({"notice": done.message})
    except OperationRefused as exc:
        query = urlencode({"notice": str(exc), "error": "1"})
    return RedirectResponse(f"{back}?{query}", status_code=303)


# -- login -----------------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request, next: str = "/") -> HTMLResponse:
    return templates.TemplateResponse(request, "login.html", {"who": None, "next": next})


@router.post("/login")
async def login(request: Request) -> Response:
    ctx = _ctx(request)
    form = await request.form()
    name, password = str(form.get("username", "")), str(form.get("password", ""))
    target = str(form.get("next", "/"))
    if not target.startswith("/") or target.startswith("//"):
        target = "/"  # no open redirect
    address = request.client.host if request.client else ""
    try:
        who = ctx.auth.password(name, password, address)
    except Throttled as exc:
        ctx.repository.record_audit(name[:64], "", "login", "", "refused", str(exc), address)
        return templates.TemplateResponse(
            request, "login.html", {"who": None, "next": target, "error": f"{exc}."},
            status_code=429,
        )  # fmt: skip
    if who is None:
        ctx.repository.record_audit(
            name[:64], "", "login", "", "refused", "wrong name or password", address
        )
        return templates.TemplateResponse(
            request, "login.html",
            {"who": None, "next": target, "error": "Wrong name or password."}, status_code=401,
        )  # fmt: skip
    ctx.repository.record_audit(who.name, who.role, "login", "", "ok", "console", address)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE, ctx.auth.cookie_for(who), max_age=ctx.auth.max_age_s, httponly=True,
        samesite="strict", secure=request.url.scheme == "https", path="/",
    )  # fmt: skip
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# -- pages -----------------------------------------------------------------------------


@router.get("/")
def dashboard(request: Request, who: Viewer) -> Response:
    ctx = _ctx(request)
    ready, why = ctx.readiness()
    recent = ctx.repository.series_page(None, "", 0, 15)
    return _page(
        request, "dashboard.html", who, nav="dashboard", version=__version__,
        ae_title=ctx.config.dicom.ae_title, ready=ready, not_ready=why,
        warnings=ctx.warnings(), disk_free_bytes=ctx.storage.free_bytes(), rows=recent.items,
        models=ctx.models(), rules=ctx.config.pipeline.model_rules,
        **asdict(ctx.repository.counts()),
    )  # fmt: skip


@router.get("/series")
def series_list(
    request: Request, who: Viewer, state: str = "", search: str = "", offset: int = 0
) -> Response:
    if state not in {s.value for s in SeriesState}:
        state = ""
    page = _ctx(request).repository.series_page(state or None, search.strip(), max(offset, 0), PAGE)
    return _page(
        request, "series_list.html", who, nav="series", page=page, rows=page.items,
        states=[s.value for s in SeriesState], state=state, search=search,
        query=urlencode({"state": state, "search": search}),
    )  # fmt: skip


@router.get("/series/{series_uid}")
def series_page(request: Request, who: Viewer, series_uid: str) -> Response:
    ctx = _ctx(request)
    detail = ctx.repository.series_detail(series_uid)
    if detail is None:
        return HTMLResponse(f"no series {series_uid}", status_code=404)
    done = next((j for j in detail.jobs if j.state == "done" and j.metrics), None)
    summary, overlays = None, []
    newest = {r.description: r for r in detail.results}  # later results replace earlier
    for result in newest.values():
        sops = [i.sop_uid for i in ctx.repository.instances_of(result.id)]
        if result.description.startswith("LGE scar summary") and sops:
            summary = sops[0]
        elif result.description.startswith("LGE scar overlay"):
            overlays = sops
    return _page(
        request, "series.html", who, nav="series", d=detail,
        metrics=json.loads(done.metrics) if done else None, summary=summary, overlays=overlays,
    )  # fmt: skip


@router.get("/preview/{sop_uid}.png")
def preview(request: Request, who: Viewer, sop_uid: str) -> Response:
    from node.http.preview import png_of

    record = _ctx(request).repository.instance_by_uid(sop_uid)
    if record is None or not Path(record.path).is_file():
        return Response(status_code=404)
    return Response(png_of(Path(record.path)), media_type="image/png",
                    headers={"Cache-Control": "private, max-age=3600"})  # fmt: skip


@router.get("/jobs")
def jobs(request: Request, who: Viewer, offset: int = 0) -> Response:
    page = _ctx(request).repository.jobs_page(None, max(offset, 0), PAGE)
    return _page(request, "jobs.html", who, nav="jobs", page=page, query="")


@router.get("/destinations")
def destination_page(request: Request, who: Viewer) -> Response:
    rows = destinations(_ctx(request))
    return _page(request, "destinations.html", who, nav="destinations", destinations=rows)


@router.get("/events")
def events(request: Request, who: Viewer) -> Response:
    rows = _ctx(request).repository.snapshot(limit=200).events
    return _page(request, "events.html", who, nav="events", events=rows)


@router.get("/audit")
def audit(request: Request, who: Admin, offset: int = 0) -> Response:
    page = _ctx(request).repository.audit_page(max(offset, 0), PAGE)
    return _page(request, "audit.html", who, nav="audit", page=page, query="")


@router.get("/config")
def config(request: Request, who: Admin) -> Response:
    doc = masked(_ctx(request).config.model_dump(mode="json"))
    return _page(request, "config.html", who, nav="config", config=json.dumps(doc, indent=2))


@router.get("/dry-run")
def dry_run_page(request: Request, who: Viewer) -> Response:
    return _page(request, "dry_run.html", who, nav="dry-run", verdict=None)


@router.post("/dry-run")
async def dry_run(request: Request, who: Viewer) -> Response:
    ctx = _ctx(request)
    form = await request.form()
    upload = form.get("file")
    try:
        if not isinstance(upload, StarletteUpload):
            raise OperationRefused("no file uploaded")
        data = await read_upload(upload, ctx.config.storage.max_instance_mb)
        verdict = ctx.operations.dry_run_header(data)
    except OperationRefused as exc:
        return _page(
            request, "dry_run.html", who, nav="dry-run", verdict=None, notice=str(exc),
            notice_error=True,
        )  # fmt: skip
    return _page(request, "dry_run.html", who, nav="dry-run", verdict=verdict)


# -- actions ---------------------------------------------------------------------------


@router.post("/series/{series_uid}/rerun")
def rerun(request: Request, who: Operator, series_uid: str) -> Response:
    ops = _ctx(request).operations

    def run() -> tuple[int, str]:
        job = ops.rerun(series_uid)
        return job, f"job {job} queued"

    return _action(request, who, "rerun", series_uid, run, f"/series/{series_uid}")


@router.post("/jobs/{job_id}/resend")
def resend(request: Request, who: Operator, job_id: int) -> Response:
    ctx = _ctx(request)

    def run() -> tuple[int, str]:
        n = ctx.operations.resend(job_id)
        return n, f"{n} sends queued for job {job_id}"

    try:
        series = ctx.repository.series(ctx.repository.job(job_id).series_id).series_uid
    except KeyError:
        return HTMLResponse(f"no job {job_id}", status_code=404)
    return _action(request, who, "resend", f"job {job_id}", run, f"/series/{series}")


@router.post("/destinations/{name}/retry")
def retry(request: Request, who: Operator, name: str) -> Response:
    ops = _ctx(request).operations

    def run() -> tuple[int, str]:
        n = ops.retry(name)
        return n, f"{n} pending sends to {name} due now"

    return _action(request, who, "retry", name, run, "/destinations")
