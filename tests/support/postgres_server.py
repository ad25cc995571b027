"""A real, private PostgreSQL server for the tests: `initdb` into a temp dir, loopback only.

- `PostgresServer().start()` finds Debian's binaries (PATH, else /usr/lib/postgresql/*/bin),
  initdb's a cluster into a fresh temp dir, listens on 127.0.0.1 on a free port (and a unix
  socket in the temp dir), with trust auth for its own user. As root it runs every server
  command as an unprivileged user (`postgres` if it exists, else `nobody`): PostgreSQL
  refuses to run as root. Every command is bounded in time.
- `restart()` stops it (fast mode: open connections are cut) and starts it again on the
  same port; `stop()` stops it and removes the temp dir.
- `new_database()` gives a URL to a fresh, empty database (one per test).
- The `postgres` fixture (session-scoped) yields a started server, or skips when the
  binaries or psycopg are missing (a failure with CI=true for the headline modules).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

USER = "cvserve"  # the cluster's superuser (a PostgreSQL role, not a system user)
TIMEOUT_S = 60


def find_bin_dir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    def __init__(self) -> None:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise FileNotFoundError("PostgreSQL binaries (initdb, pg_ctl) not found")
        self.bin = bin_dir
        # As root the server's user must reach the dir: /tmp, not a private TMPDIR.
        where = "/tmp" if os.geteuid() == 0 and os.path.isdir("/tmp") else None
        self.root = Path(tempfile.mkdtemp(prefix="cvserve-pg-", dir=where))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.run_as: str | None = None
        if os.geteuid() == 0:
            self.run_as = _unprivileged_user()
            entry = pwd.getpwnam(self.run_as)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            os.chmod(self.root, 0o700)
        self.started = False

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    def url_for(self, dbname: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{dbname}"

    def _cmd(self, *args: str, timeout: float = TIMEOUT_S) -> None:
        cmd = [*args]
        if self.run_as is not None:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root, check=False
        )
        if proc.returncode != 0:
            log = self.log.read_text()[-3000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({proc.returncode}): {proc.stdout}"
                f"{proc.stderr}\n{log}"
            )

    def start(self) -> PostgresServer:
        if not self.data.exists():
            self._cmd(
                str(self.bin / "initdb"), "-D", str(self.data), "-U", USER,
                "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions",
            )  # fmt: skip
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._cmd(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
            "-o", options, "-w", "-t", str(TIMEOUT_S), "start",
        )  # fmt: skip
        self.started = True
        return self

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the server, keep its data (a later `start()` brings it back)."""
        if self.started:
            self._cmd(
                str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode,
                "-w", "-t", str(TIMEOUT_S), "stop",
            )  # fmt: skip
            self.started = False

    def restart(self) -> None:
        """Stop (fast: every open connection is cut) and start again on the same port."""
        self.stop_server("fast")
        self.start()

    def stop(self) -> None:
        try:
            self.stop_server("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def new_database(self) -> str:
        """A fresh empty database; returns its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)


def _unprivileged_user() -> str:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root with neither a 'postgres' nor a 'nobody' user")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    pytest.importorskip("psycopg", reason="psycopg missing: pip install 'cvserve[postgres]'")
    try:
        server = PostgresServer()
    except FileNotFoundError as e:
        pytest.skip(f"{e}: install Debian's postgresql (scripts/test does, as root)")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    """A fresh database on the session's server, for one test."""
    return postgres.new_database()
