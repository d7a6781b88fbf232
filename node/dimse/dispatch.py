"""Routing and sending of results: which destinations a finished job goes to
(`deliveries_for`), and the C-STORE of the outbox, one association per destination per
round.

A row is marked sent only when the destination answered Success (or a Warning, which
PS3.4 counts as stored); anything else schedules a retry with exponential backoff, so a
PACS that is down gets everything once it is back. Rows are never deleted.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
from collections import defaultdict
from itertools import islice

from pynetdicom import AE

from node.config import Config
from node.dimse.common import RESULT_SYNTAXES, stored
from node.logs import event
from node.store.records import Delivery, OutboxRecord
from node.store.repository import Repository

log = logging.getLogger("node.dispatch")


def deliveries_for(config: Config, calling_ae: str) -> list[Delivery]:
    """Destinations whose ``sources`` patterns match the AE title the study came from."""
    return [
        Delivery(d.name, d.ae_title, d.host, d.port)
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
            groups: dict[tuple[str, str, int], list[OutboxRecord]] = defaultdict(list)
            for row in due:
                groups[(row.ae_title, row.host, row.port)].append(row)
            sent = failed = 0
            for (ae_title, host, port), rows in groups.items():
                it = iter(rows)
                while batch := list(islice(it, self.config.dispatch.batch)):
                    ok, bad = self._send(ae_title, host, port, batch)
                    sent, failed = sent + ok, failed + bad
            return sent, failed
        finally:
            self._lock.release()

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
            assoc = ae.associate(host, port, ae_title=ae_title)
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

    def _failed(self, rows: list[OutboxRecord], where: str, error: str) -> int:
        d = self.config.dispatch
        ids = [r.id for r in rows]
        delay = self.repository.mark_send_failed(ids, error, d.retry_initial_s, d.retry_max_s)
        event(
            log, "send_failed", logging.WARNING, destination=where, objects=len(rows),
            error=error, retry_in_s=round(delay, 1),
        )  # fmt: skip
        return len(rows)
