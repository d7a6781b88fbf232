"""What every request handler reaches (`Console`, on ``app.state.console``) and the
dependencies that say who is asking and whether they may."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile

from node.config import Config
from node.http.auth import COOKIE, Authenticator, Principal, Throttled
from node.store.intake import Intake
from node.store.repository import Repository
from node.store.storage import Storage
from node.workflow.operations import OperationRefused, Operations


@dataclass
class Console:
    config: Config
    repository: Repository
    storage: Storage
    intake: Intake
    operations: Operations
    auth: Authenticator
    readiness: Callable[[], tuple[bool, str]]  # (ready, why not)
    warnings: Callable[[], list[str]]
    models: Callable[[], list[dict[str, Any]]]  # the models the workers run


def principal_of(request: Request) -> Principal | None:
    """Bearer token, Basic user:password, or the session cookie, in that order."""
    ctx: Console = request.app.state.console
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return ctx.auth.token(value.strip())
    if scheme.lower() == "basic" and value:
        try:
            name, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        address = request.client.host if request.client else ""
        try:
            return ctx.auth.password(name, password, address)
        except Throttled as exc:
            raise HTTPException(429, str(exc)) from None
    cookie = request.cookies.get(COOKIE)
    return ctx.auth.session(cookie) if cookie else None


def require(role: str) -> Callable[[Request], Principal]:
    """A dependency: 401 without valid credentials, 403 (audited) without ``role``."""

    def check(request: Request) -> Principal:
        who = principal_of(request)
        if who is None:
            raise HTTPException(
                401, "log in, or send a Bearer token", headers={"WWW-Authenticate": "Bearer"}
            )
        if not who.may(role):
            ctx: Console = request.app.state.console
            ctx.repository.record_audit(
                who.name, who.role, f"{request.method} {request.url.path}", "", "refused",
                f"needs role {role}", request.client.host if request.client else "",
            )  # fmt: skip
            raise HTTPException(403, f"this needs the {role} role; {who.name} is {who.role}")
        return who

    return check


@dataclass(frozen=True)
class Done:
    """What an action did."""

    action: str
    target: str
    result: int  # the new job's id, or how many objects / sends it concerns
    message: str


def perform(
    ctx: Console, request: Request, who: Principal, action: str, target: str,
    run: Callable[[], tuple[int, str]],
) -> Done:  # fmt: skip
    """Run an operator's action and audit it, refused or done (`OperationRefused` passes
    through for the caller to answer)."""
    address = request.client.host if request.client else ""
    try:
        result, message = run()
    except OperationRefused as exc:
        ctx.repository.record_audit(
            who.name, who.role, action, target, "refused", str(exc), address
        )
        raise
    ctx.repository.record_audit(who.name, who.role, action, target, "ok", message, address)
    return Done(action, target, result, message)


@dataclass(frozen=True)
class DestinationView:
    """A configured destination with its outbox, as the console and the API list it."""

    name: str
    protocol: str  # dimse (C-STORE) or stow (STOW-RS)
    ae_title: str
    host: str
    port: int
    url: str
    sources: list[str]
    pending: int
    sent: int
    last_error: str
    next_attempt_at: float | None


def destinations(ctx: Console) -> list[DestinationView]:
    sends = {row.destination: row for row in ctx.repository.send_rows()}
    out = []
    for d in ctx.config.destinations:
        row = sends.get(d.name)
        out.append(
            DestinationView(
                d.name, d.protocol, d.ae_title, d.host, d.port, d.url, list(d.sources),
                row.pending if row else 0, row.sent if row else 0,
                row.last_error if row else "", row.next_attempt_at if row else None,
            )
        )  # fmt: skip
    return out


async def read_upload(upload: UploadFile, limit_mb: float) -> bytes:
    """An uploaded file, refused when larger than ``limit_mb`` (storage.max_instance_mb):
    read no further than that, so a huge upload costs no memory."""
    limit = int(limit_mb * 2**20)
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise OperationRefused(f"the file is larger than storage.max_instance_mb ({limit_mb:g})")
    return data
