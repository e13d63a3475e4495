"""What the benchmarks share: the tests' Nix configuration and service harness, and a timer over
whole commands."""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# The one Nix configuration and the one service harness, shared with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import Nix
from servicectl import ServiceProcess


def nix_env(home: Path) -> dict[str, str]:
    return Nix(home).env


def start_service(base: Path, **settings: Any) -> ServiceProcess:
    """`buildref serve` on its own state dir and sockets under ``base`` (the tests' harness)."""
    return ServiceProcess(base, **settings).start()


def buildref_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "buildref", *args]


def run(argv: Sequence[str], env: dict[str, str] | None = None) -> bytes:
    proc = subprocess.run(argv, env=env, capture_output=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{proc.stderr.decode(errors='replace')}")
    return proc.stdout


def timed(argv: Sequence[str], env: dict[str, str] | None = None,
          before: Callable[[], None] | None = None, repeat: int = 5) -> tuple[float, bytes]:
    """Median wall time of ``argv`` over ``repeat`` runs (``before`` runs untimed before each)."""
    times = []
    out = b""
    for _ in range(repeat):
        if before is not None:
            before()
        start = time.perf_counter()
        out = run(argv, env)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def report(label: str, ours: float, reference: float, reference_name: str) -> None:
    print(f"{label:<42} buildref {ours * 1000:8.1f} ms   {reference_name} {reference * 1000:8.1f} ms"
          f"   ratio {ours / reference:5.2f}")


async def hook_event(hook_socket: str, drv: str, t: float) -> None:
    """One event sent as the hook sends it (a connection of its own), answered ``ok``."""
    reader, writer = await asyncio.open_unix_connection(hook_socket)
    writer.write(json.dumps({"v": 1, "drv": drv, "outs": [], "t": t}).encode() + b"\n")
    answer = await reader.readline()
    if answer != b"ok\n":
        raise SystemExit(f"service answered {answer!r}")
    writer.close()
    await writer.wait_closed()
