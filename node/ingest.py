"""Indexes received instances in batches, off the association threads.

The receiver answers Success once the instance file is on disk (atomic rename, fsync by
default) and a line naming it and its sender is in the ingest journal; this thread then
indexes what arrived, many instances per transaction. The per-instance database cost
leaves the C-STORE round trip, which is what limits ingest (see ``bench/ingest.py``).

If the node dies in between, nothing is lost: at start-up every instance file that is
not in the index is indexed from disk (`node.server.Node.reconcile`), with its sender
taken from the journal.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from node.index import Index, Received
from node.logs import event

log = logging.getLogger("node.ingest")


class Journal:
    """Append-only lines ``{"path", "ae", "address", "forced"}``, emptied when indexed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held for the node's life

    def append(self, r: Received) -> None:
        line = json.dumps(
            {"path": r.path, "ae": r.calling_ae, "address": r.address, "forced": r.forced}
        )
        with self.lock:
            self._fh.write(line + "\n")
            self._fh.flush()  # in the OS after a crash of the process; not fsync'ed

    def truncate_if(self, idle: Callable[[], bool]) -> None:
        with self.lock:
            if idle():
                self._fh.truncate(0)
                self._fh.seek(0)

    def close(self) -> None:
        with self.lock:
            self._fh.close()

    @staticmethod
    def read(path: Path) -> dict[str, dict]:
        """Sender per instance path, from a journal a crash left behind."""
        senders: dict[str, dict] = {}
        if not path.exists():
            return senders
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
                senders[entry["path"]] = entry
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by the crash
        return senders


class Indexer(threading.Thread):
    """Drains the queue into the index, up to ``batch`` instances per transaction."""

    def __init__(
        self,
        index: Index,
        journal: Journal,
        on_indexed: Callable[[Received, object], None],
        batch: int = 500,
    ) -> None:
        super().__init__(name="indexer", daemon=True)
        self.index = index
        self.journal = journal
        self.on_indexed = on_indexed
        self.batch = batch
        self.queue: queue.Queue[Received | None] = queue.Queue()
        self.pending = 0  # submitted, not yet committed
        self._pending_lock = threading.Lock()
        self.idle = threading.Event()
        self.idle.set()

    def submit(self, r: Received) -> None:
        self.journal.append(r)
        with self._pending_lock:
            self.pending += 1
            self.idle.clear()
        self.queue.put(r)

    def stop(self) -> None:
        self.queue.put(None)
        self.join(timeout=60)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything submitted is indexed."""
        return self.idle.wait(timeout)

    def run(self) -> None:
        stopping = False
        while not stopping:
            first = self.queue.get()
            if first is None:
                break
            items = [first]
            while len(items) < self.batch:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                items.append(nxt)
            self._commit(items)
        self.journal.close()

    def _commit(self, items: list[Received]) -> None:
        delay = 0.5
        while True:
            try:
                outcomes = self.index.record_batch(items)
                break
            except Exception as exc:  # database unavailable: files are safe; try again
                event(
                    log, "index_failed", logging.ERROR, instances=len(items),
                    error=f"{type(exc).__name__}: {exc}", retry_in_s=delay,
                )  # fmt: skip
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        for r, outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, ValueError):
                event(
                    log, "instance_not_indexed", logging.ERROR, sop=r.info.sop_uid,
                    peer_ae=r.calling_ae, reason=str(outcome),
                )  # fmt: skip
                self.index.record_event(
                    "instance_not_indexed", str(outcome), "ERROR", r.calling_ae, r.address,
                    r.info.series_uid,
                )  # fmt: skip
                # A conflicting object (a series UID reused by another study...): not part
                # of any series here; its file goes, the event stays.
                Path(r.path).unlink(missing_ok=True)
            self.on_indexed(r, outcome)
        with self._pending_lock:
            self.pending -= len(items)
            done = self.pending == 0
        if done:
            self.journal.truncate_if(lambda: self.pending == 0)
            self.idle.set()
