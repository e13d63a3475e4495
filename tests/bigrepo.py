"""Repositories with many directories, written with ``git fast-import`` (seconds, not minutes):
what a hostile local user records to make the service work hard. Used by the tests and
``bench/attack.py``."""

from __future__ import annotations

import subprocess
from pathlib import Path


def many_directories(repo: Path, directories: int, *, flat: bool = False, commits: int = 1) -> str:
    """A repository on ``main`` whose first commit holds ``directories`` directories of one small
    file each — all in the root (``flat``), or 100 to a parent directory — and ``commits`` - 1
    commits after it that change one file at the root; the tip's commit id."""
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    stream: list[str] = []
    for c in range(commits):
        stream.append(f"commit refs/heads/main\ncommitter t <t@t> {1_700_000_000 + c} +0000\ndata 3\nc{c}\n")
        if c == 0:
            for i in range(directories):
                path = f"d{i}/f" if flat else f"d{i // 100}/e{i % 100}/f"
                data = f"file {i}\n"
                stream.append(f"M 100644 inline {path}\ndata {len(data)}\n{data}")
        else:
            data = f"change {c}\n"
            stream.append(f"M 100644 inline top\ndata {len(data)}\n{data}")
        stream.append("\n")
    subprocess.run(["git", "-C", str(repo), "fast-import", "--quiet"], input="".join(stream).encode(),
                   check=True)
    tip = subprocess.run(["git", "-C", str(repo), "rev-parse", "main"], capture_output=True, check=True)
    return tip.stdout.decode().strip()


def branchy(repo: Path, branches: int, dirs: int, folder: str = "") -> None:
    """``branches`` branches (``main`` and ``b1``...), each one commit of ``dirs`` directories of one
    file, no content shared between branches; all directories in ``folder`` when given (one flat
    folder), else at the root."""
    parts = []
    for b in range(branches):
        ref = "refs/heads/main" if b == 0 else f"refs/heads/b{b}"
        parts.append(f"commit {ref}\ncommitter t <t@t> {1700000000 + b} +0000\ndata 1\nx\n")
        for d in range(dirs):
            data = f"branch {b} directory {d}\n"
            prefix = f"{folder}/" if folder else ""
            parts.append(f"M 100644 inline {prefix}d{d:05d}/f\ndata {len(data)}\n{data}")
        parts.append("\n")
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "fast-import", "--quiet"], input="".join(parts).encode(),
                   check=True)
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "-f", "main"], check=True)
