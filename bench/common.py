"""What the benchmarks share: the isolated Nix configuration and a timer over whole commands."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

NIX_CONFIG = "\n".join([
    "sandbox = false",
    "substituters =",
    "build-users-group =",
    "experimental-features = nix-command flakes",
])


def nix_env(home: Path) -> dict[str, str]:
    return {**os.environ, "NIX_CONFIG": NIX_CONFIG, "HOME": str(home),
            "XDG_CACHE_HOME": str(home / "cache"), "NIX_REMOTE": ""}


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


class Service:
    """`buildref serve` on its own state dir and sockets under ``base``; ``extra`` is more TOML."""

    def __init__(self, base: Path, extra: str = "") -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.hook = base / "hook.sock"
        self.query = base / "query.sock"
        self.spool = base / "state" / "spool"
        config = base / "buildref.toml"
        config.write_text(f'state_dir = "{base}/state"\n{extra}\n[hook]\nsocket = "{self.hook}"\n'
                          f'[query]\nsocket = "{self.query}"\n[log]\nformat = "json"\n')
        self.log = base / "serve.log"
        with self.log.open("wb") as log:
            argv = buildref_argv("serve", "--config", str(config))
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log)
        while True:
            try:
                self.call("status")
                return
            except OSError:
                time.sleep(0.05)

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """One request on a new connection, as the CLI makes it."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.query))
            sock.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                                     "params": params or {}}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                data += sock.recv(1 << 20)
        reply = json.loads(data)
        if "error" in reply:
            raise SystemExit(f"{method} {params}: {reply['error']}")
        return reply["result"]

    def wait_idle(self) -> None:
        while self.call("status")["queueDepth"]:
            time.sleep(0.02)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=120)

    def index_times(self) -> list[float]:
        """Seconds each indexed build took, from the service's log."""
        return [json.loads(line)["ms"] / 1000 for line in self.log.read_text().splitlines()
                if '"event": "indexed"' in line]
