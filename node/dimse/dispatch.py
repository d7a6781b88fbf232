"""Routing and sending of results: which destinations a finished job goes to
(`deliveries_for`), and the sending of the outbox: C-STORE, one association per
destination per round (or its ``associations`` in parallel), or STOW-RS
(`node.http.stow_client`), one request per batch.

A row is marked sent only when the destination answered Success (or a Warning, which
PS3.4 counts as stored); anything else schedules a retry with exponential backoff, so a
PACS that is down gets everything once it is back. Rows are never deleted.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

from pynetdicom import AE

from node.config import Config, Destination
from node.dimse.common import NO_DELAY, RESULT_SYNTAXES, stored
from node.logs import event
from node.store.records import Delivery, OutboxRecord
from node.store.repository import Repository

log = logging.getLogger("node.dispatch")


def delivery_of(destination: Destination) -> Delivery:
    """The outbox's address of a destination: AE title, host and port for C-STORE; for
    STOW-RS no AE title, the URL and port 0."""
    d = destination
    if d.protocol == "stow":
        return Delivery(d.name, "", d.url, STOW_PORT)
    return Delivery(d.name, d.ae_title, d.host, d.port)


STOW_PORT = 0  # an outbox row with port 0 is sent over STOW-RS to the URL in its host


def deliveries_for(config: Config, calling_ae: str) -> list[Delivery]:
    """Destinations whose ``sources`` patterns match the AE title the study came from."""
    return [
        delivery_of(d)
        for d in config.destinations
        if any(fnmatch.fnmatchcase(calling_ae, pattern) for pattern in d.sources)
    ]


class Dispatcher:
    def __init__(self, config: Config, repository: Repository) -> None:
        self.config = config
        self.repository = repository
        self._lock = threading.Lock()  # one round at a time

    def run_once(self) -> tuple[int, int]:
        """Send what is due; returns (sent, failed)."""
        if not self._lock.acquire(blocking=False):
            return 0, 0
        try:
            due = self.repository.due_sends()
            groups: dict[tuple[str, str, str, int], list[OutboxRecord]] = defaultdict(list)
            for row in due:
                groups[(row.destination, row.ae_title, row.host, row.port)].append(row)
            sent = failed = 0
            for (name, ae_title, host, port), rows in groups.items():
                it = iter(rows)
                while batch := list(islice(it, self.config.dispatch.batch)):
                    if port == STOW_PORT:
                        ok, bad = self._stow(name, host, batch)
                    else:
                        ok, bad = self._send_parallel(name, ae_title, host, port, batch)
                    sent, failed = sent + ok, failed + bad
            return sent, failed
        finally:
            self._lock.release()

    def _send_parallel(
        self, name: str, ae_title: str, host: str, port: int, rows: list[OutboxRecord]
    ) -> tuple[int, int]:
        """``rows`` over the destination's number of associations, each in its thread."""
        dest = next((d for d in self.config.destinations if d.name == name), None)
        n = min(dest.associations if dest else 1, len(rows))
        if n <= 1:
            return self._send(ae_title, host, port, rows)
        # Interleaved, so each association starts with the first objects (SEG, SR).
        with ThreadPoolExecutor(n, thread_name_prefix="dispatch") as pool:
            results = list(
                pool.map(lambda i: self._send(ae_title, host, port, rows[i::n]), range(n))
            )
        return sum(ok for ok, _ in results), sum(bad for _, bad in results)

    def _send(
        self, ae_title: str, host: str, port: int, rows: list[OutboxRecord]
    ) -> tuple[int, int]:
        ae = AE(ae_title=self.config.dicom.ae_title)
        cfg = self.config.dicom
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = cfg.network_timeout_s
        for sop_class in sorted({r.sop_class_uid for r in rows}):
            ae.add_requested_context(sop_class, RESULT_SYNTAXES)
        where = f"{ae_title}@{host}:{port}"
        try:
            assoc = ae.associate(host, port, ae_title=ae_title, evt_handlers=[NO_DELAY])
        except Exception as exc:  # socket errors surface here on some platforms
            return 0, self._failed(rows, where, f"cannot associate with {where}: {exc}")
        if not assoc.is_established:
            why = "rejected" if assoc.is_rejected else "no association (down or unreachable)"
            return 0, self._failed(rows, where, f"cannot associate with {where}: {why}")
        ok: list[int] = []
        bad: dict[str, list[OutboxRecord]] = defaultdict(list)
        try:
            for row in rows:
                if not assoc.is_established:
                    bad["association lost"].append(row)
                    continue
                try:
                    status = assoc.send_c_store(row.path)
                except FileNotFoundError:
                    bad[f"result file missing: {row.path}"].append(row)
                    continue
                except Exception as exc:
                    bad[f"{type(exc).__name__}: {exc}"].append(row)
                    continue
                code = int(status.Status) if status and "Status" in status else None
                if code is not None and stored(code):
                    ok.append(row.id)
                else:
                    reason = "no response" if code is None else f"status 0x{code:04X}"
                    bad[f"C-STORE to {where} failed: {reason}"].append(row)
        finally:
            if assoc.is_established:
                assoc.release()
        self.repository.mark_sent(ok)
        if ok:
            event(log, "results_sent", destination=where, objects=len(ok))
        n_bad = sum(self._failed(rs, where, why) for why, rs in bad.items())
        return len(ok), n_bad

    def _stow(self, name: str, url: str, rows: list[OutboxRecord]) -> tuple[int, int]:
        dest = next((d for d in self.config.destinations if d.name == name and d.url == url), None)
        if dest is None:  # the destination left the config (or its URL changed)
            return 0, self._failed(rows, url, f"destination {name!r} with {url} is not configured")
        import httpx  # only for STOW-RS destinations: not on every start-up

        from node.http.stow_client import StowClient

        client = StowClient(dest, self.config.dicom.network_timeout_s)
        try:
            errors = client.store([(r.sop_uid, r.path) for r in rows])
        except httpx.HTTPError as exc:
            return 0, self._failed(
                rows, url, f"STOW-RS to {url} failed: {type(exc).__name__}: {exc}"
            )
        finally:
            client.close()
        ok = [r.id for r in rows if r.sop_uid not in errors]
        self.repository.mark_sent(ok)
        if ok:
            event(log, "results_sent", destination=url, objects=len(ok))
        bad: dict[str, list[OutboxRecord]] = defaultdict(list)
        for r in rows:
            if r.sop_uid in errors:
                bad[errors[r.sop_uid]].append(r)
        return len(ok), sum(self._failed(rs, url, why) for why, rs in bad.items())

    def _failed(self, rows: list[OutboxRecord], where: str, error: str) -> int:
        d = self.config.dispatch
        ids = [r.id for r in rows]
        delay = self.repository.mark_send_failed(ids, error, d.retry_initial_s, d.retry_max_s)
        event(
            log, "send_failed", logging.WARNING, destination=where, objects=len(rows),
            error=error, retry_in_s=round(delay, 1),
        )  # fmt: skip
        return len(rows)
