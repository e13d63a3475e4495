"""Large git repositories made in seconds with ``git fast-import``: many directories, many distinct
branches — the shapes that make recording or searching expensive."""

from __future__ import annotations

import subprocess
from pathlib import Path


def fast_import(path: Path, stream: str) -> None:
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    subprocess.run(["git", "-C", str(path), "fast-import", "--quiet"], input=stream.encode(), check=True)
    subprocess.run(["git", "-C", str(path), "checkout", "-q", "-f", "main"], check=True)


def branchy(path: Path, branches: int, dirs: int, folder: str = "") -> None:
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
    fast_import(path, "".join(parts))
