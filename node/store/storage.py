"""Where the node keeps files: one place derives every path, always from hashed UIDs.

Received instances live at ``instances/<ab>/<sha(study)>/<sha(series)>/<sha(sop)>.dcm``
and job results at ``results/<sha(series)>/<job id>/``. Names never contain a raw UID
or a patient attribute, so a crafted UID cannot escape the data folder, and every file
is written to a temporary name in the same folder, flushed, and renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
# A file in a results folder, as a worker names it when handing results back:
# "seg.dcm", "overlay/003.dcm" (at most one folder down; no dot files, no "..").
RESULT_FILE = re.compile(r"^[A-Za-z0-9][\w.-]{0,99}(/[A-Za-z0-9][\w.-]{0,99})?$")


class InvalidUidError(ValueError):
    """A UID that is not a DICOM UID (digits and dots, at most 64 characters)."""


def check_uid(value: object, what: str) -> str:
    """Return ``value`` as a UID string, or raise `InvalidUidError` naming ``what``."""
    text = str(value or "").strip().rstrip("\x00")
    if not text:
        raise InvalidUidError(f"{what} is missing")
    if len(text) > 64 or not UID.match(text):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise InvalidUidError(f"{what} {shown!r} is not a valid UID")
    return text


def uid_hash(uid: str) -> str:
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:32]


class Storage:
    """The node's data folder."""

    def __init__(self, data_dir: Path, fsync: bool = True) -> None:
        self.root = Path(data_dir).resolve()
        self.fsync = fsync
        self.instances = self.root / "instances"
        self.results = self.root / "results"
        self.incoming = self.root / "incoming"  # temp files; emptied at start-up
        self.quarantined = self.root / "quarantine"  # acknowledged, but not indexable
        for folder in (self.instances, self.results, self.incoming):
            folder.mkdir(parents=True, exist_ok=True)

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        study = uid_hash(study_uid)
        name = f"{uid_hash(sop_uid)}.dcm"
        return self.instances / study[:2] / study / uid_hash(series_uid) / name

    def results_dir(self, series_uid: str, job_id: int) -> Path:
        return self.results / uid_hash(series_uid) / f"job{job_id:06d}"

    def result_file(self, folder: Path, name: str) -> Path:
        """``name`` in a results folder; ValueError for a name that could leave it."""
        if not RESULT_FILE.match(name) or ".." in name:
            raise ValueError(f"{name!r} is not a result file name")
        path = (folder / name).resolve()
        if self.results not in path.parents:
            raise ValueError(f"{name!r} is outside the results folder")
        return path

    def place_results(self, folder: Path, files: list[tuple[str, bytes]]) -> None:
        """A job's results handed back by a worker on another host, as one folder: written
        (and flushed) beside it, then swapped in, so the folder is whole or absent; what
        an earlier attempt left there goes."""
        stage = folder.with_name(f".{folder.name}.{os.getpid()}.{id(files):x}.incoming")
        shutil.rmtree(stage, ignore_errors=True)
        try:
            for name, data in files:
                target = self.result_file(folder, name)
                self.write_atomic(stage / target.relative_to(folder), data)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(stage, folder)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise

    def secret(self, name: str, size: int = 32) -> bytes:
        """A random key made once and kept in the data folder (0600), e.g. the one that
        signs console sessions, so they survive a restart. Written whole or not at all
        (a full disk leaves no empty key behind)."""
        path = self.root / name
        try:
            data = path.read_bytes()
            if len(data) == size:
                return data
        except FileNotFoundError:
            pass
        old = os.umask(0o077)
        try:
            self.write_atomic(path, secrets.token_bytes(size))
        finally:
            os.umask(old)
        return path.read_bytes()

    def write_atomic(self, path: Path, data: bytes) -> None:
        """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(data):x}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        try:  # the folder usually exists: create it only when the open says it does not
            fd = os.open(tmp, flags, 0o666)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, flags, 0o666)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if self.fsync:
                    os.fdatasync(fd)  # the data and its size: all a reader needs
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # disk full, I/O error: no temp file outlives it
            raise

    def free_bytes(self) -> int:
        """Free space on the disk holding the instances."""
        return shutil.disk_usage(self.instances).free

    def clean_temporaries(self, locate: Callable[[bytes], Path] | None = None) -> tuple[int, int]:
        """Deal with the temp files a crash left behind; return (removed, restored).

        An instance temp file is complete and fsync'ed before its rename, but the rename
        itself reaches the disk later: after a power loss the temp file can be all that
        is left of an acknowledged instance. ``locate`` says where an instance belongs
        (it raises on a cut-off file); a temp file it places at the temp file's own final
        name, not taken yet, is put there. The rest is removed.
        """
        removed = restored = 0
        for tmp in list(self.instances.rglob(".*.tmp")):
            final = tmp.with_name(tmp.name[1:].split(".dcm.", 1)[0] + ".dcm")
            try:
                placed = (
                    locate is not None and ".dcm." in tmp.name and not final.exists()
                    and locate(tmp.read_bytes()) == final
                )  # fmt: skip
            except Exception:  # any failure to decode: a cut-off file
                placed = False
            if placed:
                os.replace(tmp, final)
                restored += 1
                continue
            tmp.unlink(missing_ok=True)
            removed += 1
        for tmp in self.results.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)  # results are remade by the re-queued job
            removed += 1
        for stage in self.results.glob("*/.*.incoming"):
            shutil.rmtree(stage, ignore_errors=True)  # a hand-back cut short
            removed += 1
        shutil.rmtree(self.incoming, ignore_errors=True)
        self.incoming.mkdir(parents=True, exist_ok=True)
        return removed, restored

    def quarantine(self, path: Path) -> Path:
        """Move an instance file that cannot join the index out of ``instances/`` into
        ``quarantine/`` (kept for the operator; start-up recovery no longer sees it)."""
        path = Path(path).resolve()
        if self.instances not in path.parents:
            raise ValueError(f"{path} is not an instance file of {self.root}")
        self.quarantined.mkdir(parents=True, exist_ok=True)
        target = self.quarantined / f"{path.stem}.{os.getpid()}.{id(path):x}.dcm"
        os.replace(path, target)
        return target

    def remove(self, path: Path) -> None:
        """Delete a file or folder inside the data folder (never outside it)."""
        path = Path(path).resolve()
        if self.root not in path.parents:
            raise ValueError(f"{path} is outside the data folder {self.root}")
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        parent, stop = path.parent, (self.instances, self.results, self.root)
        while parent not in stop and self.root in parent.parents:
            try:
                parent.rmdir()  # prune empty hash folders
            except OSError:
                break
            parent = parent.parent
