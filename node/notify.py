"""Notifications for whoever looks after the node: a webhook (JSON POST, e.g. a chat or
paging service) and/or an e-mail (SMTP) when a job fails, models fail to load, a
destination keeps failing for a while, or the disk runs low.

Operator events reach `Notifier.offer` from `node.events.notify`; the two conditions
(a destination failing for ``destination_failing_minutes``, free disk under
``disk_low_mb``) are checked by `Notifier.check` on the node's scheduler. Deliveries run in
a thread of their own with a few retries, so a slow or dead webhook never holds up
receiving or processing; a condition is told again only after ``repeat_minutes``.
"""

from __future__ import annotations

import json
import logging
import queue
import smtplib
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate
from typing import TYPE_CHECKING

from node.config import NotifySection
from node.logs import event

if TYPE_CHECKING:
    from node.store.repository import Repository

log = logging.getLogger("node.notify")

ATTEMPTS = 3


@dataclass(frozen=True)
class Notice:
    """What the webhook receives (JSON)."""

    kind: str  # job_failed, models_failed, destination_failing, disk_low, ...
    level: str
    message: str
    node: str  # the node's AE title
    time: float
    details: dict[str, str | int | float] = field(default_factory=dict)


class Notifier:
    def __init__(self, config: NotifySection, node_name: str) -> None:
        self.config = config
        self.node_name = node_name
        self._queue: queue.Queue[Notice | None] = queue.Queue(maxsize=1000)
        self._last: dict[str, float] = {}  # condition key -> when it was last told
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.channels())

    def channels(self) -> list[tuple[str, Callable[[Notice], None]]]:
        """(name, send) of each configured way to tell someone."""
        found: list[tuple[str, Callable[[Notice], None]]] = []
        if self.config.webhook_url:
            found.append(("webhook", self._post))
        if self.config.smtp_host and self.config.mail_to:
            found.append(("mail", self._mail))
        return found

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._deliver, name="notify", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def offer(self, kind: str, level: str, message: str, **details: str | int | float) -> None:
        """An operator event; sent when its kind is in ``events`` (not more often than
        ``repeat_minutes`` for the same kind and subject)."""
        if not self.enabled or kind not in self.config.events:
            return
        subject = str(details.get("series") or details.get("destination") or "")
        if self._due(f"{kind}:{subject}"):
            notice = Notice(kind, level, message, self.node_name, time.time(), details)
            try:
                self._queue.put_nowait(notice)
            except queue.Full:
                event(log, "notice_dropped", logging.WARNING, kind=kind, reason="queue full")

    def check(self, repository: Repository, free_bytes: Callable[[], int]) -> None:
        """The standing conditions: destinations failing too long, disk low."""
        if not self.enabled:
            return
        cutoff = time.time() - self.config.destination_failing_minutes * 60
        for row in repository.send_rows():
            failing_since = repository.oldest_pending(row.destination)
            if (
                row.pending
                and row.last_error
                and failing_since is not None
                and (failing_since <= cutoff)
            ):
                minutes = (time.time() - failing_since) / 60
                self.offer(
                    "destination_failing", "ERROR",
                    f"destination {row.destination} has failed for {minutes:.0f} min: "
                    f"{row.pending} objects waiting; last error: {row.last_error}",
                    destination=row.destination, pending=row.pending,
                )  # fmt: skip
        free_mb = free_bytes() / 2**20
        if free_mb < self.config.disk_low_mb:
            self.offer(
                "disk_low", "ERROR",
                f"{free_mb:.0f} MiB free on the data folder's disk (notify.disk_low_mb is "
                f"{self.config.disk_low_mb:g})",
                free_mb=round(free_mb),
            )  # fmt: skip

    def _due(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.config.repeat_minutes * 60:
                return False
            self._last[key] = now
            return True

    def _deliver(self) -> None:
        while True:
            notice = self._queue.get()
            if notice is None:
                return
            for channel, send in self.channels():
                for attempt in range(1, ATTEMPTS + 1):
                    try:
                        send(notice)
                        event(log, "notice_sent", kind=notice.kind, channel=channel)
                        break
                    except (OSError, smtplib.SMTPException) as exc:  # URLError is an OSError
                        if attempt == ATTEMPTS:
                            # logged only: a notice about failing notices would loop
                            event(log, "notice_failed", logging.WARNING, kind=notice.kind,
                                  channel=channel, error=str(exc))  # fmt: skip
                        else:
                            time.sleep(2.0 * attempt)

    def _post(self, notice: Notice) -> None:
        request = urllib.request.Request(
            str(self.config.webhook_url), data=json.dumps(asdict(notice)).encode(),
            method="POST", headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10):
            pass

    def _mail(self, notice: Notice) -> None:
        cfg = self.config
        message = EmailMessage()
        message["Subject"] = f"[lge-node {notice.node}] {notice.level}: {notice.kind}"
        message["From"] = cfg.mail_from
        message["To"] = ", ".join(cfg.mail_to)
        message["Date"] = formatdate(notice.time, usegmt=True)
        when = datetime.fromtimestamp(notice.time, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        lines = [notice.message, "", f"node: {notice.node}", f"time: {when}"]
        lines += [f"{key}: {value}" for key, value in notice.details.items()]
        lines += ["", "lge-node (research use only; not a medical device)"]
        message.set_content("\n".join(lines))
        host, port = str(cfg.smtp_host), cfg.smtp_port
        smtp: smtplib.SMTP
        if cfg.smtp_security == "tls":
            smtp = smtplib.SMTP_SSL(host, port, timeout=10, context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(host, port, timeout=10)
        with smtp:
            if cfg.smtp_security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
            if cfg.smtp_username and cfg.smtp_password:
                smtp.login(cfg.smtp_username, cfg.smtp_password)
            smtp.send_message(message)


_active: list[Notifier] = []


def install(notifier: Notifier) -> None:
    """The process's notifier, which `node.events.notify` offers every event to."""
    _active[:] = [notifier]


def offer(kind: str, level: str, message: str, **details: str | int | float) -> None:
    for notifier in _active:
        notifier.offer(kind, level, message, **details)
