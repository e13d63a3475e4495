"""Test helpers: real Nix with an isolated configuration, git, and the buildref CLI as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any

# The isolated configuration (no sandbox, no substituters, nothing from /etc), defined once: the
# test command's bootstrap, the tests and the benchmarks all read this file.
NIX_CONFIG = (Path(__file__).resolve().parent / "nix.conf").read_text().strip()


class Nix:
    """Runs the real Nix (root, single-user, nothing from /etc, no network)."""

    def __init__(self, home: Path) -> None:
        self.env = {
            **os.environ,
            "NIX_CONFIG": NIX_CONFIG,
            "HOME": str(home),
            "XDG_CACHE_HOME": str(home / "cache"),
            "XDG_CONFIG_HOME": str(home / "config"),
            "NIX_REMOTE": "",
        }

    def run(self, *args: str, input: bytes | None = None) -> bytes:
        proc = subprocess.run(args, env=self.env, input=input, capture_output=True, check=False)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace")
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{err}")
        return proc.stdout

    def eval_json(self, expr: str) -> object:
        return json.loads(self.run("nix", "eval", "--impure", "--json", "--expr", expr))

    def instantiate(self, file: Path, *attrs: str) -> list[str]:
        args = ["nix-instantiate", str(file)]
        for attr in attrs:
            args += ["-A", attr]
        return self.run(*args).decode().split()


def buildref(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run([sys.executable, "-m", "buildref", *args], capture_output=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"buildref {' '.join(args)} failed:\n{proc.stderr.decode(errors='replace')}")
    return proc


def buildref_json(*args: str) -> object:
    return json.loads(buildref(*args, "--json").stdout)


def git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=True,
                          env={**os.environ, **(env or {})})
    return proc.stdout.decode().strip()


def nix_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False).replace("${", "\\${")


def assert_error_line(proc: subprocess.CompletedProcess[bytes], *fragments: str) -> None:
    """A failure the way buildref reports bad input: non-zero exit, one ``error:`` line, no traceback."""
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode != 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], err


NOBODY = pwd.getpwnam("nobody")


def as_nobody(query_socket: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``buildref ARGS`` as user nobody (uid and gid only, no groups), asking ``query_socket``."""
    command = ["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups",
               sys.executable, "-m", "buildref", "--socket", str(query_socket), *args]
    return subprocess.run(command, capture_output=True, check=False, cwd="/")


def chown_nobody(path: Path) -> None:
    """``path`` and everything below it made nobody's (links themselves, not what they name)."""
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            os.lchown(name, NOBODY.pw_uid, NOBODY.pw_gid)


def index_facts(db_path: Path) -> dict[str, Any]:
    """What a service's SQLite index holds, asked through the storage interfaces (never SQL): the
    recorded repositories, the rows each recorder's repositories take, and the table counts."""
    from buildref.store.sqlite import SqliteStore

    async def read() -> dict[str, Any]:
        store = await SqliteStore.open(str(db_path))
        try:
            async with store.reading() as r:
                repositories = await r.sources.repositories()
                rows = {by: (await r.sources.usage(by)).rows
                        for by in sorted({x.recorded_by or "" for x in repositories})}
                return {"repositories": sorted(x.name for x in repositories), "rows": rows,
                        "tables": await r.builds.table_counts()}
        finally:
            await store.close()

    return asyncio.run(read())
