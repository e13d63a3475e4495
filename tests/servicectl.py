"""The one harness for a real ``buildref serve``, used by the tests and the benchmarks: its own
short temp dir (socket paths must stay short), its own database, started and stopped as a process;
plus the environment that makes Nix call the real hook."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tomli_w

from helpers import NIX_CONFIG

ROOT = Path(__file__).resolve().parent.parent
HOOK = ROOT / "hook" / "buildref-hook"


class ServiceProcess:
    def __init__(self, base: Path | None = None, **settings: Any) -> None:
        self.base = base or Path(tempfile.mkdtemp(prefix="brs", dir="/tmp"))
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        self.hook_socket = self.base / "hook.sock"
        self.query_socket = self.base / "query.sock"
        self.spool = self.base / "state" / "spool"
        self.db_path = self.base / "state" / "buildref.db"
        self.log = self.base / "serve.log"
        config: dict[str, Any] = {
            "state_dir": str(self.base / "state"),
            "hook": {"socket": str(self.hook_socket)},
            "query": {"socket": str(self.query_socket)},
            "log": {"format": "json"},
            **settings,
        }
        self.config = self.base / "buildref.toml"
        self.config.write_bytes(tomli_w.dumps(config).encode())
        self.proc: subprocess.Popen[bytes] | None = None

    # -- life cycle

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "buildref", "serve", "--config", str(self.config)]

    def start(self, wait: bool = True, **popen: Any) -> ServiceProcess:
        log = self.log.open("ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log, **popen)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def refused_start(self, timeout: float = 15) -> tuple[int, str]:
        """``serve`` run to its exit, as one that refuses to start: (exit status, standard error).
        One still running after ``timeout`` seconds is killed and raises AssertionError."""
        proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            text = err.decode(errors="replace")
            raise AssertionError(f"still running after {timeout:.0f} s:\n{text}") from None
        return proc.returncode, err.decode(errors="replace")

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"buildref serve exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                self.call("status")
                return
            except (OSError, AssertionError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"buildref serve did not come up:\n{self.log_text()}") from None
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        shutil.rmtree(self.base, ignore_errors=True)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_text().splitlines() if line.startswith("{")]

    # -- talking to it

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        reply = json.loads(self.raw(self.query_socket, json.dumps(
            {"jsonrpc": "2.0", "id": 7, "method": method, "params": params or {}}).encode() + b"\n"))
        assert "error" not in reply, reply
        assert reply["id"] == 7
        return reply["result"]

    @staticmethod
    def raw(path: Path, data: bytes, timeout: float = 15) -> bytes:
        """Send bytes, read until the server answers a line or closes."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            # a server that stops reading (a line too long) has still answered
            with contextlib.suppress(BrokenPipeError):
                sock.sendall(data)
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        return answer

    def wait_idle(self, timeout: float = 60) -> dict[str, Any]:
        """Until nothing is pending and the spool is empty; the last status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.call("status")
            if status["queueDepth"] == 0 and status["spoolFiles"] == 0 and status["contentsPending"] == 0:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"service still busy: {status}")
            time.sleep(0.05)

    def builds(self) -> dict[str, dict[str, str]]:
        """drv path -> outputs, for every recorded build (the newest per drv)."""
        found: dict[str, dict[str, str]] = {}
        for build in reversed(self.call("builds", {"limit": 100000})):
            found[build["drvPath"]] = build["outputs"]
        return found

    def events(self, **params: Any) -> list[dict[str, Any]]:
        """Events as ``buildref events --json`` lists them, newest first (all of them by default)."""
        return self.call("events", {"limit": 100000, **params})  # type: ignore[no-any-return]

    def index_times(self) -> list[float]:
        """Seconds each indexed build took, from the service's log."""
        return [line["ms"] / 1000 for line in self.log_lines() if line.get("event") == "indexed"]

    # -- the hook, as Nix runs it

    def hook_env(self, **extra: str) -> dict[str, str]:
        return {"BUILDREF_HOOK_SOCKET": str(self.hook_socket), "BUILDREF_SPOOL_DIR": str(self.spool), **extra}

    def nix_env(self, nix_env: dict[str, str]) -> dict[str, str]:
        """Nix's environment with our hook as post-build-hook."""
        return {**nix_env, **self.hook_env(), "NIX_CONFIG": NIX_CONFIG + f"\npost-build-hook = {HOOK}"}


def run_hook(env: dict[str, str], drv: str, outs: str = "") -> subprocess.CompletedProcess[bytes]:
    """The hook as Nix runs it: ``python3 -I -S`` (through its shebang), DRV_PATH and OUT_PATHS set."""
    return subprocess.run([str(HOOK)], env={"PATH": os.environ.get("PATH", ""), **env, "DRV_PATH": drv,
                                            "OUT_PATHS": outs}, capture_output=True, check=False)


def nix_build_json(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    """``nix build --json``; give .drv paths (or ``-f FILE`` and attributes, which are instantiated
    first) so that every output is built and printed, as Nix 2.8 does for a .drv."""
    if args and args[0] == "-f":
        proc = subprocess.run(["nix-instantiate", args[1], *(a for attr in args[2:] for a in ("-A", attr))],
                              env=env, capture_output=True, check=False)
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        args = tuple(proc.stdout.decode().split())
    proc = subprocess.run(["nix", "build", "--json", "--no-link", *args], env=env, capture_output=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    result: list[dict[str, Any]] = json.loads(proc.stdout)
    return result


def wait_for(predicate: Any, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
