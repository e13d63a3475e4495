"""A real PostgreSQL server for the tests and benchmarks: Debian's ``postgresql`` binaries,
``initdb`` into a temp dir as an unprivileged user, listening only on a Unix socket in that dir,
stopped (and removed) at the end. Databases are made per test; URLs are libpq URLs as the service's
``database`` setting takes them."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

USER = "buildref"  # the server's superuser role (trust authentication, on the private socket only)
_names = itertools.count()


class PostgresMissing(RuntimeError):
    pass


def _bin_dir() -> Path:
    """The newest installed server's binaries (Debian keeps them out of PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    raise PostgresMissing("PostgreSQL is required: no initdb found"
                          " (apt-get install postgresql; tests/bootstrap.sh does)")


def _account() -> tuple[int, int] | None:
    """Who runs the server: ourselves, unless we are root (which PostgreSQL refuses)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    raise PostgresMissing("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL as")


class PostgresServer:
    """One server on its own data directory and socket; :meth:`start` again after :meth:`stop`
    brings the same data back."""

    def __init__(self, durable: bool = False, **settings: str) -> None:
        self.bin = _bin_dir()
        self.account = _account()
        self.base = Path(tempfile.mkdtemp(prefix="brpg", dir="/tmp"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        # the tests need no crash safety (durable=False: no fsync); the benchmarks measure with it
        self.settings = {"listen_addresses": "", "unix_socket_directories": str(self.base),
                         "max_connections": "400", "shared_buffers": "128MB",
                         **({} if durable else {"fsync": "off", "synchronous_commit": "off",
                                                "full_page_writes": "off"}),
                         **settings}
        if self.account is not None:
            os.chown(self.base, *self.account)
        self.base.chmod(0o700)
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-sync")

    def _run(self, tool: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        user = {} if self.account is None else {"user": self.account[0], "group": self.account[1],
                                                 "extra_groups": []}
        proc = subprocess.run([str(self.bin / tool), *args], capture_output=True, check=False,
                              cwd=self.base, **user, **kwargs)
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            err = proc.stderr.decode(errors="replace")
            raise RuntimeError(f"{tool} {' '.join(args)} failed:\n{err}\n{log}")
        return proc

    def start(self) -> PostgresServer:
        options = " ".join(f"-c {key}={value!r}" if value == "" else f"-c {key}={value}"
                           for key, value in self.settings.items())
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-o", options)
        return self

    def stop(self) -> None:
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "60")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def close(self) -> None:
        if self.running():
            self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    # -- databases

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@/{database}?host={self.base}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        proc = subprocess.run([str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                               "-h", str(self.base), "-U", USER, "-d", database, "-c", sql],
                              capture_output=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"psql {sql!r} failed:\n{proc.stderr.decode(errors='replace')}")
        return proc.stdout.decode()

    @staticmethod
    def name_of(url: str) -> str:
        """The database a URL of :meth:`url` names."""
        return urlsplit(url).path.lstrip("/")

    def create_database(self, prefix: str = "t") -> str:
        """A new, empty database; its URL."""
        name = f"{prefix}{os.getpid()}_{next(_names)}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)
