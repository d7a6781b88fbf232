"""The running node: DICOM service, indexer, assembler, workers, dispatcher and retention
wired together.

Start-up order makes a crash harmless: the store is recovered (`node.store.recovery`),
jobs a crash left running are queued again, and only then does the port open.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.background import BackgroundScheduler

from node.config import Config, changes, masked
from node.dimse.dispatch import Dispatcher
from node.dimse.scp import DicomService, access_warning
from node.events import flush_deferred
from node.logs import event
from node.metrics import watch_index
from node.notify import Notifier, install
from node.store.ingest import Indexer, Journal
from node.store.intake import Intake
from node.store.records import Received, StoreOutcome
from node.store.recovery import recover
from node.store.repository import Repository
from node.store.retention import Retention
from node.store.storage import Storage
from node.workflow.assembler import Assembler
from node.workflow.operations import Operations
from node.workflow.worker import Worker

if TYPE_CHECKING:
    from node.http.context import Console
    from node.http.service import HttpService

log = logging.getLogger("node.server")
GIL_SWITCH_S = 0.02


def stop_on_signals(stopped: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stopped`` (the main loop then stops cleanly)."""

    def _stop(signum: int, _frame: object) -> None:
        event(log, "signal", signal=signal.Signals(signum).name)
        stopped.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)


class Node:
    def __init__(self, config: Config) -> None:
        self.config = config
        # pynetdicom polls in several threads per association; with CPython's default
        # 5 ms the receiving thread loses the interpreter to them after every file write
        # and index query. 20 ms measured ~15 % more C-STORE/s (bench/ingest.py).
        sys.setswitchinterval(GIL_SWITCH_S)
        self.storage = Storage(config.storage.data_dir, fsync=config.storage.fsync)
        # Sharing the index: what this node receives is recorded as held by it.
        self.repository = Repository(
            config.database_url, node=config.node_name if config.distributed else None
        )
        if config.distributed:  # jobs deferred with procrastinate, in the same transaction
            from node.store.jobqueue import Procrastinate

            queue = Procrastinate(config.database_url)
            queue.install(self.repository.engine)
            self.repository.on_queued = queue.queued
        self.journal_path = self.storage.root / "ingest.journal"
        self.indexer: Indexer | None = None
        self.intake = Intake(config, self.storage, self.repository, self._submit)
        self.dicom = DicomService(config, self.repository, self.intake)
        self.assembler = Assembler(config, self.repository)
        self.dispatcher = Dispatcher(config, self.repository)
        self.retention = Retention(config, self.storage, self.repository)
        self.wake_workers = threading.Event()
        wake, done = self.wake_workers, self._results_ready
        self.workers = [
            Worker(config, self.storage, self.repository, wake, done, f"worker-{i}")
            for i in range(1, config.jobs.workers + 1)
        ]
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self.stopped = threading.Event()
        self.notifier = Notifier(config.notify, config.dicom.ae_title)
        install(self.notifier)
        self.http: HttpService | None = None  # built once the DICOM port is open

    def _console(self) -> Console:
        from node.http.auth import Authenticator
        from node.http.context import Console

        operations = Operations(
            self.config, self.repository, self.wake_workers.set, self._results_ready
        )
        auth = Authenticator(self.config.http, self.storage.secret("console.secret"))
        return Console(
            self.config, self.repository, self.storage, self.intake, operations, auth,
            self.readiness, self.warnings, self.models,
        )  # fmt: skip

    def _audit_config(self) -> None:
        """A configuration that differs from the one the node last started with goes into
        the audit trail with what changed (the file is edited outside the node, so the
        change is seen, and recorded, when it takes effect)."""
        applied = self.storage.root / "config.applied.json"
        now = masked(self.config.model_dump(mode="json"), digest=True)
        try:
            before = json.loads(applied.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            before = None
        if before == now:
            return
        what = "first start" if before is None else "changed: " + ", ".join(changes(before, now))
        self.repository.record_audit("lge-node", "", "config", "", "ok", what)
        self.storage.write_atomic(applied, json.dumps(now, indent=1, sort_keys=True).encode())
        event(log, "config_changed", detail=what)

    def readiness(self) -> tuple[bool, str]:
        """Ready when the DICOM port listens and every worker has its models."""
        if self.dicom.server is None:
            return False, "the DICOM service is not listening"
        loading = [w.name for w in self.workers if not w.ready.is_set()]
        if loading:
            return False, f"loading models: {', '.join(loading)}"
        failed = [f"{w.name}: {w.load_error}" for w in self.workers if w.load_error]
        if failed:
            return False, "models failed to load: " + "; ".join(failed)
        return True, ""

    def models(self) -> list[dict[str, Any]]:
        """The models this node's workers run (as the first worker that loaded them has
        them; every worker loads the same registry). Empty while loading or without
        workers."""
        for worker in self.workers:
            if worker.models is not None:
                return [asdict(m) for m in worker.models.describe()]
        return []

    def warnings(self) -> list[str]:
        found = [w for w in (access_warning(self.config),) if w]
        if self.config.http.enabled and not (self.config.http.users or self.config.http.tokens):
            found.append("no console users or API tokens: every API call is refused")
        return found

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        t0 = time.perf_counter()
        if self.config.distributed:  # workers elsewhere find this node's files through it
            self.repository.register_node(
                self.config.node_url, str(self.storage.root), socket.gethostname()
            )
        store = recover(self.storage, self.repository, self.journal_path)
        # Embedded: jobs this node's crash left running. Distributed: other hosts' workers
        # may be running theirs; lost ones are found by their stopped heartbeat.
        recovered = [] if self.config.distributed else self.repository.recover_jobs()
        self._audit_config()
        journal = Journal(self.journal_path)
        journal.truncate_if(lambda: True)  # everything in it is indexed now
        self.indexer = Indexer(
            self.repository, journal, self._indexed, storage=self.storage,
            on_complete=lambda: self._run_now("assemble"),
        )  # fmt: skip
        self.indexer.start()
        event(
            log, "starting", pid=os.getpid(), data_dir=self.storage.root,
            temp_files_removed=store.temp_files_removed,
            temp_files_restored=store.temp_files_restored,
            orphans_indexed=store.orphans_indexed, orphans_removed=store.orphans_removed,
            jobs_recovered=len(recovered),
        )  # fmt: skip
        if self.config.http.enabled:  # made before a scanner can fill the disk
            self.storage.secret("console.secret")
        # The port opens first: everything below (models loading in the workers, the
        # scheduler, the console's imports) comes after a scanner can already send.
        self.dicom.start()
        tick = min(1.0, max(0.2, self.config.storage.stable_age_s / 4))
        self.scheduler.add_job(self._assemble, "interval", seconds=tick, id="assemble",
                               max_instances=1, coalesce=True)  # fmt: skip
        self.scheduler.add_job(self._dispatch, "interval", seconds=1.0, id="dispatch",
                               max_instances=1, coalesce=True)  # fmt: skip
        purge_s = self.config.storage.purge_interval_s
        self.scheduler.add_job(self._purge, "interval", seconds=purge_s, id="retention",
                               max_instances=1, coalesce=True,
                               next_run_time=datetime.now(UTC))  # fmt: skip
        self._schedule_polls()
        if self.config.distributed:
            self.scheduler.add_job(self._alive, "interval", seconds=30.0, id="alive",
                                   max_instances=1, coalesce=True)  # fmt: skip
        if self.notifier.enabled:
            self.notifier.start()
            self.scheduler.add_job(self._check_notices, "interval",
                                   seconds=self.config.notify.check_interval_s, id="notify",
                                   max_instances=1, coalesce=True)  # fmt: skip
        self.scheduler.start()
        # The store outlives the config: a PACS no longer polled loses its stored job.
        wanted = {f"poll-{p.name}" for p in self.config.pacs if p.poll_minutes}
        for job in self.scheduler.get_jobs(jobstore="persistent"):
            if job.id not in wanted:
                job.remove()
        watch_index(self.repository, self.storage.free_bytes)
        if self.config.http.enabled:
            from node.http.service import HttpService

            self.http = HttpService(self._console())
            self.http.start()
        # Models load last, once every start-up import is done: a library that walks
        # sys.modules while another thread imports fails ("dictionary changed size").
        for worker in self.workers:
            worker.start()
        event(log, "started", seconds=round(time.perf_counter() - t0, 2))

    def _schedule_polls(self) -> None:
        """PACS polling jobs in a persistent store (the node's database)."""
        from node.dimse import poller

        polled = [p for p in self.config.pacs if p.poll_minutes]
        poller.bind(self.config, self.repository)
        self.scheduler.add_jobstore(self.repository.job_store(), "persistent")
        for p in polled:
            self.scheduler.add_job(
                "node.dimse.poller:poll", "interval", args=[p.name], minutes=p.poll_minutes,
                id=f"poll-{p.name}", jobstore="persistent", replace_existing=True,
                max_instances=1, coalesce=True, next_run_time=datetime.now(UTC),
            )  # fmt: skip

    def wait_ready(self, timeout: float = 300.0) -> bool:
        """Block until every worker has its models loaded (or failed to)."""
        return all(w.ready.wait(timeout) for w in self.workers)

    def stop(self) -> None:
        if self.stopped.is_set():
            return
        self.stopped.set()
        if self.http is not None:
            self.http.stop()
        self.dicom.stop()
        if self.indexer is not None:
            self.indexer.stop()
        for worker in self.workers:
            worker.stop()
        self.scheduler.shutdown(wait=True)
        self.notifier.stop()
        for worker in self.workers:
            worker.join(timeout=120)
        flush_deferred(self.repository)
        self.repository.close()
        event(log, "stopped")

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT; a running job finishes first."""
        stop_on_signals(self.stopped)
        self.start()
        try:
            while not self.stopped.wait(0.5):
                pass
        finally:
            self.stopped.clear()
            self.stop()

    # -- scheduled work ----------------------------------------------------------------

    def _assemble(self) -> None:
        if self.indexer is not None and self.indexer.pending:
            # Instances acknowledged but not yet indexed: judging now could see a
            # half-indexed series as complete (its first instance is already "old").
            return
        try:
            if self.assembler.check():
                self.wake_workers.set()
        except Exception as exc:  # logged; the next tick tries again
            event(log, "assemble_error", logging.ERROR, error=f"{type(exc).__name__}: {exc}")

    def _dispatch(self) -> None:
        try:
            self.dispatcher.run_once()
        except Exception as exc:
            event(log, "dispatch_error", logging.ERROR, error=f"{type(exc).__name__}: {exc}")

    def _alive(self) -> None:
        try:
            self.repository.node_alive()
        except Exception as exc:
            event(log, "alive_error", logging.WARNING, error=f"{type(exc).__name__}: {exc}")

    def _purge(self) -> None:
        try:
            self.retention.purge()
        except Exception as exc:
            event(log, "retention_error", logging.ERROR, error=f"{type(exc).__name__}: {exc}")

    def _check_notices(self) -> None:
        try:
            self.notifier.check(self.repository, self.storage.free_bytes)
        except Exception as exc:
            event(log, "notify_error", logging.ERROR, error=f"{type(exc).__name__}: {exc}")

    def _submit(self, received: Received) -> None:
        assert self.indexer is not None, "the receiver starts after the indexer"
        self.indexer.submit(received)

    def _indexed(self, r: Received, outcome: StoreOutcome | ValueError) -> None:
        if isinstance(outcome, StoreOutcome) and (outcome.duplicate or outcome.reopened):
            event(
                log, "instance_indexed", series=r.info.series_uid, sop=r.info.sop_uid,
                peer_ae=r.calling_ae, duplicate=outcome.duplicate, reopened=outcome.reopened,
            )  # fmt: skip

    def _results_ready(self) -> None:
        self._run_now("dispatch")

    def _run_now(self, job_id: str) -> None:
        job = self.scheduler.get_job(job_id)
        if job is not None:
            job.modify(next_run_time=datetime.now(UTC))


def run(config: Config) -> None:
    Path(config.storage.data_dir).mkdir(parents=True, exist_ok=True)
    Node(config).serve_forever()


class WorkerHost:
    """``lge-node worker``: job workers only - no DICOM port, no console - on a host
    that processes the jobs a shared PostgreSQL index queues (procrastinate). It reads
    a series' files in place when their indexed paths exist here (a shared folder) and
    otherwise fetches them from the node holding them, handing the results back to it
    (`node.workflow.remote`); ``data_dir`` is then only scratch."""

    def __init__(self, config: Config) -> None:
        from node.store.jobqueue import Procrastinate

        if not config.distributed:
            raise ValueError(
                "lge-node worker takes its jobs from procrastinate: set storage.database_url "
                "to the PostgreSQL index the receiving nodes use"
            )
        self.config = config
        self.storage = Storage(config.storage.data_dir, fsync=config.storage.fsync)
        self.repository = Repository(config.database_url)
        Procrastinate(config.database_url).install(self.repository.engine)
        self.stopped = threading.Event()
        host = socket.gethostname()
        self.workers = [
            Worker(config, self.storage, self.repository, threading.Event(), None,
                   f"{host}-{os.getpid()}-{i}")
            for i in range(1, max(1, config.jobs.workers) + 1)
        ]  # fmt: skip

    def serve_forever(self) -> None:
        stop_on_signals(self.stopped)
        stale = self.workers[0].remote.clean_stale() if self.workers[0].remote else 0
        for worker in self.workers:
            worker.start()
        event(
            log, "worker_host_started", workers=len(self.workers), pid=os.getpid(),
            fetch=self.config.cluster.fetch, stale_scratch_removed=stale,
        )  # fmt: skip
        try:
            while not self.stopped.wait(0.5):
                if not any(w.is_alive() for w in self.workers):
                    break
        finally:
            for worker in self.workers:
                worker.stop()
            for worker in self.workers:
                worker.join(timeout=120)
            self.repository.close()
            event(log, "stopped")
