"""The node's HTTP service: the REST API, login, probes and Prometheus metrics, served by
uvicorn in a thread of the node process (like Orthanc's embedded web server).

On by default, on loopback; ``[http]`` in the config. Without users or tokens configured
every API call is refused (401), while the probes and ``/metrics`` stay open for
scrapers (``open_probes``)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Form, HTTPException, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from node import __version__
from node.http import api, console, dicomweb
from node.http.auth import COOKIE, Principal, Throttled
from node.http.context import Console, principal_of
from node.logs import event
from node.metrics import REGISTRY

log = logging.getLogger("node.http")


def create_app(ctx: Console) -> FastAPI:
    app = FastAPI(
        title="lge-node",
        version=__version__,
        description="Operator API of an LGE cardiac MR DICOM node (research use only).",
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    app.state.console = ctx
    app.include_router(api.router)
    app.include_router(console.router)
    if ctx.config.http.dicomweb:
        app.include_router(dicomweb.router)
    app.add_exception_handler(console.PageRefusal, console.refusal_handler)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")

    def probe_access(request: Request) -> None:
        if not ctx.config.http.open_probes and principal_of(request) is None:
            raise HTTPException(401, "log in, or send a Bearer token")

    probe = [Depends(probe_access)]

    @app.get("/healthz", summary="The process serves and its index answers", dependencies=probe)
    def healthz() -> JSONResponse:
        try:
            ctx.repository.counts()
        except Exception as exc:
            return JSONResponse({"status": "error", "error": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", summary="DICOM port open and models loaded", dependencies=probe)
    def readyz() -> JSONResponse:
        ready, why = ctx.readiness()
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "reason": why},
            status_code=200 if ready else 503,
        )

    @app.get("/metrics", summary="Prometheus metrics", dependencies=probe)
    def metrics() -> Response:
        return PlainTextResponse(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.post("/api/v1/login", summary="Log in; sets the session cookie")
    def login(
        request: Request,
        username: Annotated[str, Form()],
        password: Annotated[str, Form()],
    ) -> JSONResponse:
        address = request.client.host if request.client else ""
        try:
            who = ctx.auth.password(username, password, address)
        except Throttled as exc:
            ctx.repository.record_audit(
                username[:64], "", "login", "", "refused", str(exc), address
            )
            raise HTTPException(429, str(exc)) from None
        if who is None:
            ctx.repository.record_audit(
                username[:64], "", "login", "", "refused", "wrong name or password", address
            )
            raise HTTPException(401, "wrong name or password")
        ctx.repository.record_audit(who.name, who.role, "login", "", "ok", "", address)
        response = JSONResponse({"name": who.name, "role": who.role})
        _set_session(response, ctx, who, request)
        return response

    @app.post("/api/v1/logout", summary="Log out")
    def logout() -> JSONResponse:
        response = JSONResponse({"status": "logged out"})
        response.delete_cookie(COOKIE, path="/")
        return response

    return app


def _set_session(response: Response, ctx: Console, who: Principal, request: Request) -> None:
    response.set_cookie(
        COOKIE, ctx.auth.cookie_for(who), max_age=ctx.auth.max_age_s, httponly=True,
        samesite="strict", secure=request.url.scheme == "https", path="/",
    )  # fmt: skip


class HttpService:
    """uvicorn in a daemon thread; `start` returns once the port listens."""

    def __init__(self, ctx: Console) -> None:
        cfg = ctx.config.http
        self.app = create_app(ctx)
        options: dict[str, Any] = {}
        if cfg.certificate and cfg.private_key:
            options = {"ssl_certfile": str(cfg.certificate), "ssl_keyfile": str(cfg.private_key)}
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app, host=cfg.bind_address, port=cfg.port, log_config=None,
                access_log=False, lifespan="off", **options,
            )
        )  # fmt: skip
        self.scheme = "https" if options else "http"
        self.thread = threading.Thread(target=self.server.run, name="http", daemon=True)

    def start(self, timeout: float = 15.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP service did not start (port in use?)")
            time.sleep(0.05)
        cfg = self.server.config
        event(log, "http_listening", url=f"{self.scheme}://{cfg.host}:{cfg.port}")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
