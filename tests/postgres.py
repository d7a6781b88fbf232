"""A throw-away PostgreSQL server for tests: Debian's ``postgresql`` binaries, a cluster in
a temp dir (initdb, trust authentication on loopback only), started with pg_ctl on a
free port, stopped and removed afterwards. As root, the cluster runs as the ``postgres``
system user (PostgreSQL refuses to run as root)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import psycopg

from node.demo.peers import free_port


def pg_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4])
    )
    return Path(found[-1]).parent if found else None


class Postgres:
    """``with Postgres(tmp) as pg: pg.url`` (a SQLAlchemy URL for psycopg 3)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.data = workdir / "pgdata"
        self.port = free_port()
        self.bin = pg_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed; run scripts/setup-system")
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/lge"

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/lge"

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)

    def __enter__(self) -> Postgres:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            shutil.chown(self.workdir, entry.pw_uid, entry.pw_gid)
            os.chmod(self.workdir, 0o755)
            for parent in self.workdir.parents:  # the cluster's user must reach it
                if str(parent).startswith("/tmp/"):
                    os.chmod(parent, os.stat(parent).st_mode | 0o055)
        done = self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust",
                         "--encoding=UTF8", "--locale=C.UTF-8")  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr}")
        self.start()
        with psycopg.connect(
            f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres", autocommit=True
        ) as con:
            con.execute("CREATE DATABASE lge")
        return self

    def start(self) -> None:
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        done = self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l",
                         str(self.workdir / "postgres.log"), "-w", "start")  # fmt: skip
        if done.returncode != 0:
            log = (self.workdir / "postgres.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"pg_ctl start failed: {done.stderr}\n{log}")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def __exit__(self, *exc: object) -> None:
        self.stop("immediate")
        shutil.rmtree(self.workdir, ignore_errors=True)

    def new_database(self) -> str:
        """A fresh, empty database on this server: its SQLAlchemy URL."""
        name = f"t{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn.replace("/lge", "/postgres"), autocommit=True) as con:
            con.execute(f"CREATE DATABASE {name}")
        return self.url.replace("/lge", f"/{name}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.dsn, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                time.sleep(0.2)
        raise TimeoutError("PostgreSQL did not come up")
