"""Where a queued job goes to be run.

Embedded (the default, SQLite or any database): the node's own worker threads poll the
index (`Repository.claim_job`). On PostgreSQL, **procrastinate** carries the jobs to
workers on any host: whenever a job of the index becomes queued (new, retried, re-run),
a procrastinate job naming it is deferred **in the same transaction**, so a job is never
queued without a way to run, nor run without being queued. Its ``lock`` is the series
(one job per series at a time, in any worker) and its ``queueing_lock`` the job (never
two waiting copies). The index stays the record of what happened (attempts, errors,
results, outbox); procrastinate only says who runs what, when.

A worker that dies mid-job stops its heartbeat; the other workers find its job stalled
(`Procrastinate.recover_stalled`), put the index's job back in the queue and let
procrastinate retry it elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import procrastinate
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.engine import make_url

from node.logs import event

log = logging.getLogger("node.jobqueue")

TASK = "lge_node.run_job"
QUEUE = "jobs"
SCHEMA_LOCK = 0x4C47454F  # advisory lock while procrastinate's schema is installed
HEARTBEAT_S = 5.0
STALLED_AFTER_S = 20.0  # no heartbeat for this long: the worker is gone


class Procrastinate:
    def __init__(self, database_url: str) -> None:
        url = make_url(database_url)
        if url.get_backend_name() != "postgresql":
            raise ValueError("procrastinate needs a PostgreSQL index (storage.database_url)")
        conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))
        self._handler: Callable[[int], None] | None = None

        @self.app.task(name=TASK, queue=QUEUE)
        def run_job(job_id: int) -> None:
            assert self._handler is not None, "run_worker sets the handler"
            self._handler(job_id)

        self.task = run_job

    def install(self, engine: Engine) -> None:
        """procrastinate's tables and functions, once per database."""
        with engine.begin() as con:
            con.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
            if not inspect(con).has_table("procrastinate_jobs"):
                schema = procrastinate.schema.SchemaManager.get_schema()
                con.exec_driver_sql(schema.replace("%", "%%"))  # as procrastinate applies it
                event(log, "queue_installed", engine="procrastinate")

    def queued(
        self, connection: Connection, job_id: int, series_id: int, not_before: float
    ) -> None:
        """Defer the run of ``job_id`` on the caller's transaction (psycopg connection)."""
        raw = connection.connection.driver_connection
        self.task.configure(
            lock=f"series-{series_id}", queueing_lock=f"job-{job_id}",
            schedule_at=datetime.fromtimestamp(not_before, UTC), connection=raw,
        ).defer(job_id=job_id)  # fmt: skip

    def run_worker(
        self,
        handler: Callable[[int], None],
        stop: threading.Event,
        name: str,
        on_stalled: Callable[[int], bool],
    ) -> None:
        """Run jobs with ``handler(job_id)`` until ``stop`` is set (blocks)."""
        self._handler = handler
        asyncio.run(self._work(stop, name, on_stalled))

    async def _work(
        self, stop: threading.Event, name: str, on_stalled: Callable[[int], bool]
    ) -> None:
        """Work until stopped; when the database goes away (restart, failover, network),
        wait and connect again instead of ending the worker."""
        delay = 1.0
        while not stop.is_set():
            try:
                await self._session(stop, name, on_stalled)
                delay = 1.0
            except Exception as exc:
                event(
                    log, "queue_unavailable", logging.WARNING, worker=name,
                    error=f"{type(exc).__name__}: {exc}", retry_in_s=delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15.0)

    async def _session(
        self, stop: threading.Event, name: str, on_stalled: Callable[[int], bool]
    ) -> None:
        async with self.app.open_async():
            worker = asyncio.create_task(
                self.app.run_worker_async(
                    queues=[QUEUE], name=name, concurrency=1, wait=True,
                    install_signal_handlers=False, update_heartbeat_interval=HEARTBEAT_S,
                    stalled_worker_timeout=STALLED_AFTER_S, fetch_job_polling_interval=1.0,
                    shutdown_graceful_timeout=5.0,
                )
            )  # fmt: skip
            ticks = 0
            try:
                while not stop.is_set() and not worker.done():
                    await asyncio.sleep(0.5)
                    ticks += 1
                    if ticks % 10 == 0:
                        await self.recover_stalled(on_stalled)
            finally:
                if not worker.done():
                    worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker  # raises what ended it, when it was not us

    async def recover_stalled(self, on_stalled: Callable[[int], bool]) -> list[int]:
        """Jobs of workers gone silent: back to the index's queue, retried by procrastinate
        (``on_stalled(job_id)`` puts the index's job back; False: nothing to run any more,
        the procrastinate job is failed instead)."""
        manager = self.app.job_manager
        found = []
        stalled: Any = await manager.get_stalled_jobs(
            queue=QUEUE, task_name=TASK, seconds_since_heartbeat=STALLED_AFTER_S
        )
        for job in stalled:
            job_id = int(job.task_kwargs["job_id"])
            again = await asyncio.to_thread(on_stalled, job_id)
            if again:
                await manager.retry_job(job)
            else:
                await manager.finish_job(job, status=procrastinate.jobs.Status.FAILED,
                                         delete_job=False)  # fmt: skip
            event(log, "job_stalled", logging.WARNING, job=job_id, retried=again)
            found.append(job_id)
        return found
