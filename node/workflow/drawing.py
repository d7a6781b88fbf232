"""A process beside each worker that draws a job's overlay pages and PDF report while the
worker encodes the SEG and SR (`dicom_templates.outputs.write_outputs`).

Both halves are pure Python and hold the interpreter, so threads would take turns; a
second process does the drawing at the same time, and a study's results are ready about
a third sooner on two cores. The process is started once, when the worker loads its
models, and imports the drawing code then, so a job pays only for sending the arrays.
If it dies (killed, out of memory), the job draws in its own thread and the next job
starts a new process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor
from typing import Any, ParamSpec, TypeVar

from node.logs import event

log = logging.getLogger("node.drawing")

P = ParamSpec("P")
T = TypeVar("T")


def _prepare(parent: int) -> None:
    threading.Thread(target=_follow, args=(parent,), name="follow-parent", daemon=True).start()
    import dicom_templates.outputs  # noqa: F401  matplotlib, Pillow, highdicom: seconds


def _follow(parent: int) -> None:
    """Exit once the worker's process is gone: a node killed outright (SIGKILL, OOM) must
    not leave its drawing process behind, idle, for every restart."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _ready() -> bool:
    return True


class DrawingProcess(Executor):
    """One spawned process (no fork: the worker has threads and loaded models)."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            self._start()

    def _start(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                1, mp_context=context, initializer=_prepare, initargs=(os.getpid(),)
            )
            self._pool.submit(_ready)  # start it and import now, not in the first job
        return self._pool

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        with self._lock:
            try:
                return self._start().submit(fn, *args, **kwargs)
            except BrokenExecutor:  # the process died since the last job
                assert self._pool is not None
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
                event(log, "drawing_process_restarted", logging.WARNING)
                return self._start().submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)
                self._pool = None

    @property
    def pids(self) -> list[int]:
        """The drawing process's PID (for tests and `ps`), once it runs."""
        pool: Any = self._pool
        return sorted(pool._processes) if pool is not None and pool._processes else []
