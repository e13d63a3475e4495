"""What must not hurt the service: SIGKILL in a burst of hook runs, hostile clients on both
sockets, and shutdown; plus systemd socket activation and sd_notify, done as systemd does them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from buildsets import build_set, salt
from helpers import Nix
from servicectl import ServiceProcess, nix_build_json, run_hook, wait_for

BURST = 2000
CONCURRENCY = 16


def many_drvs(nix: Nix, directory: Path, count: int, system: str) -> list[str]:
    path = directory / "many.nix"
    path.write_text(f"""builtins.genList (i: derivation {{
  name = "burst-${{toString i}}"; system = "{system}"; builder = "/bin/sh"; salt = "{salt()}";
}}) {count}""")
    drvs = nix.instantiate(path)
    assert len(drvs) == count
    return drvs


def test_sigkill_during_a_burst_loses_nothing_and_duplicates_nothing(nix: Nix, system: str,
                                                                     tmp_path: Path) -> None:
    drvs = many_drvs(nix, tmp_path, BURST, system)
    svc = ServiceProcess().start()
    try:
        env = svc.hook_env()
        done = 0
        lock = threading.Lock()
        killed = threading.Event()

        def one(drv: str) -> subprocess.CompletedProcess[bytes]:
            nonlocal done
            proc = run_hook(env, drv)
            with lock:
                done += 1
                if done == BURST // 4 and not killed.is_set():
                    killed.set()
                    svc.kill()  # mid-burst, no warning
                    svc.start(wait=False)
            return proc

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            results = list(pool.map(one, drvs))
        assert killed.is_set()
        svc.wait_ready()
        svc.wait_idle(timeout=120)

        assert all(r.returncode == 0 for r in results)
        errors = [r.stderr.decode() for r in results if r.stderr]
        assert not any("LOST" in e for e in errors), errors[:3]
        spooled = sum("spooled" in e for e in errors)
        acked = BURST - spooled
        assert spooled > 0 and acked > 0  # the kill really fell inside the burst

        events = svc.events()
        per_drv = Counter(e["drvPath"] for e in events)
        states = Counter(e["state"] for e in events)
        builds = svc.call("builds", {"limit": 100000})
        assert set(per_drv) == set(drvs)
        assert max(per_drv.values()) == 1  # exactly once: acked-then-killed events spooled again are one
        assert states == {"indexed": BURST}
        assert len(builds) == len({b["drvPath"] for b in builds}) == BURST
    finally:
        svc.close()


def event(drv: object, outs: object, t: object) -> bytes:
    return json.dumps({"v": 1, "drv": drv, "outs": outs, "t": t}).encode() + b"\n"


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    return sock


def _corrupt(path: str, change: bytes) -> None:
    """What a bad disk does to a store file (root can write the read-only file)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2] + change)


def _damaged_drvs(nix: Nix, directory: Path, system: str) -> tuple[str, str]:
    """Two real .drv files damaged in the store: one cut short, one still well formed but altered."""
    path = directory / "victims.nix"
    path.write_text(f"""[
  (derivation {{ name = "cut"; system = "{system}"; builder = "/bin/sh"; salt = "{salt()}"; }})
  (derivation {{ name = "altered"; system = "{system}"; builder = "/bin/sh"; salt = "{salt()}"; }})
]""")
    cut, altered = nix.instantiate(path)
    _corrupt(cut, b"\x00\xff")
    data = Path(altered).read_bytes()
    Path(altered).write_bytes(data.replace(b'"builder","/bin/sh"', b'"builder","/bin/sx"'))
    return cut, altered


def test_hostile_clients_get_errors_and_change_nothing(nix: Nix, system: str, tmp_path: Path) -> None:
    svc = ServiceProcess(idle_timeout=1.0).start()
    try:
        built = nix_build_json(svc.nix_env(nix.env), "-f", str(build_set(tmp_path, system)), "multi")
        svc.wait_idle()
        before = svc.builds()
        assert before[built[0]["drvPath"]] == built[0]["outputs"]
        hook, query = svc.hook_socket, svc.query_socket
        t = time.time()
        valid = str(built[0]["drvPath"])

        hostile_events = {
            b"\x00\xff\xfe garbage\n": "not JSON",
            b"[1, 2, 3]\n": "JSON object",
            b'{"v": 2, "drv": "x", "t": 1}\n': "unsupported event version",
            event(5, [], t): "'drv' must be a string",
            event(valid, "x", t): "'outs'",
            event(valid, [], "now"): "'t' must be a number",
            event("/etc/shadow.drv", [], t): "not in the Nix store",
            event("/nix/store/../etc/x.drv", [], t): "inside a store object",
            event(valid.replace(".drv", ""), [], t): "not a derivation",
            event("/nix/store/" + "a" * 32 + "-missing.drv", [], t): "not in the store",
            b'{"v": 1, "drv": "' + b"x" * (2 << 20) + b'"}\n': "longer than",
        }
        for line, fragment in hostile_events.items():
            answer = ServiceProcess.raw(hook, line).decode(errors="replace")
            assert answer.startswith("error: ") and fragment in answer, (line[:80], answer)

        # corrupted .drv files in the store: accepted (they are store paths), then kept as failed
        cut, altered = _damaged_drvs(nix, tmp_path, system)
        for drv in (cut, altered):
            assert ServiceProcess.raw(hook, event(drv, [], t)) == b"ok\n"

        # clients that connect and never finish a line are cut off after idle_timeout
        for path in (hook, query):
            with _connect(path) as sock:
                sock.sendall(b'{"v": 1')
                start = time.monotonic()
                assert sock.recv(100) == b""
                assert time.monotonic() - start < 5

        hostile_queries = {
            b"\xff\n": -32700,
            b"42\n": -32600,
            b'{"jsonrpc": "2.0", "id": 1, "method": 5}\n': -32600,
            b'{"jsonrpc": "2.0", "id": 1, "method": "status", "params": [1]}\n': -32602,
            b'{"jsonrpc": "2.0", "id": 1, "method": "drop_tables"}\n': -32601,
            b'{"jsonrpc": "2.0", "id": 1, "method": "builds", "params": {"limit": "all"}}\n': -32602,
            b'{"jsonrpc": "2.0", "id": 1, "method": "events", "params": {"keys": [[1, 2]]}}\n': -32602,
            b'{"jsonrpc": "2.0", "id": 1, "method": "lookup", "params": {"repository": "x"}}\n': -32602,
            b"[" * 100000 + b"\n": -32700,
            b'{"id": 1, "method": "' + b"s" * (2 << 20) + b'"}\n': -32700,
        }
        for line, code in hostile_queries.items():
            reply = json.loads(ServiceProcess.raw(query, line))
            assert reply["error"]["code"] == code and reply["error"]["message"].startswith("error: "), reply

        status = svc.wait_idle()
        assert svc.builds() == before  # earlier data intact
        failed = {e["drvPath"]: e["error"] for e in svc.events(state="failed")}
        assert failed[cut].startswith(f"error: {cut}: ")
        assert failed[altered].startswith(f"error: {altered}: its contents belong at /nix/store/")
        assert status["events"]["failed"] == len(hostile_events) + 2  # every bad event kept with its error
        log = svc.log_lines()
        assert sum(line["event"] == "bad hook event" for line in log) == len(hostile_events)
        assert sum(line["event"] == "bad query" for line in log) == len(hostile_queries)
        assert {line["drv"] for line in log if line["event"] == "event failed"} == {cut, altered}
        assert svc.proc is not None and svc.proc.poll() is None
    finally:
        svc.close()


def test_socket_activation_sd_notify_and_sigterm_drain(nix: Nix, system: str, tmp_path: Path) -> None:
    svc = ServiceProcess()
    try:
        # what systemd does: bind the sockets, set their modes, and hand them over as fds 3 and 4
        sockets = []
        for path, mode in ((svc.hook_socket, 0o600), (svc.query_socket, 0o666)):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(path))
            os.chmod(path, mode)
            sock.listen(64)
            sockets.append(sock)
        notify_path = svc.base / "notify"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        notify.settimeout(20)
        fds = [s.fileno() for s in sockets]
        env = {**os.environ, "LISTEN_FDS": "2", "LISTEN_FDNAMES": "hook:query",
               "NOTIFY_SOCKET": str(notify_path)}
        argv = svc.argv
        log = svc.log.open("ab")
        # systemd's part after fork: the sockets become fds 3 and 4, LISTEN_PID the pid that execs
        launcher = ("import os, sys\n"
                    "for target, fd in enumerate(map(int, sys.argv[1:3]), start=3):\n"
                    "    os.dup2(fd, target); os.close(fd)\n"
                    "os.environ['LISTEN_PID'] = str(os.getpid())\n"
                    "os.execv(sys.argv[3], sys.argv[3:])\n")
        proc = subprocess.Popen([sys.executable, "-c", launcher, *map(str, fds), *argv], env=env,
                                pass_fds=fds, stdout=log, stderr=log)
        svc.proc = proc
        log.close()
        ready = notify.recv(4096).decode()
        assert ready.startswith("READY=1"), ready
        for sock in sockets:
            sock.close()  # the service holds its own copies now
        assert svc.call("status")["pid"] == proc.pid
        assert any(line.get("socket_activated") for line in svc.log_lines())

        # a burst of events, then SIGTERM at once: everything acked is indexed before exit 0
        drvs = many_drvs(nix, tmp_path, 200, system)
        env_hook = svc.hook_env()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda d: run_hook(env_hook, d), drvs))
        assert all(r.stderr == b"" for r in results)  # all delivered, none spooled
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        svc.proc = None
        assert notify.recv(4096).decode().startswith("STOPPING=1")
        svc.start()  # the index, read back by a new service: every acked event was indexed
        states = Counter(e["state"] for e in svc.events())
        assert states == {"indexed": 200}
        # the sockets belong to systemd: a socket-activated service leaves them in place
        assert svc.hook_socket.exists() and svc.query_socket.exists()
        notify.close()
    finally:
        svc.close()


def test_sigterm_removes_sockets_it_created(tmp_path: Path) -> None:
    svc = ServiceProcess().start()
    try:
        assert svc.stop(signal.SIGTERM) == 0
        assert not svc.hook_socket.exists() and not svc.query_socket.exists()
        # and a stale socket left by a SIGKILL does not stop the next start
        svc.start()
        svc.kill()
        assert svc.hook_socket.exists()
        svc.start()  # waits until it answers
        assert svc.proc is not None and svc.call("status")["pid"] == svc.proc.pid
    finally:
        svc.close()


def test_bad_spool_files_do_not_stop_the_service(tmp_path: Path) -> None:
    svc = ServiceProcess().start()
    try:
        svc.spool.mkdir(parents=True, exist_ok=True)
        (svc.spool / "weird.json").mkdir()  # cannot be read as a file: left, logged
        (svc.spool / "1.0-1.json").write_bytes(b"\xff not an event\n")  # kept as a failed event
        (svc.spool / ".tmp-2.0-2").write_bytes(b"half written")  # a hook still writing: ignored
        wait_for(lambda: not (svc.spool / "1.0-1.json").exists(), what="the garbage file to be drained")
        status = svc.call("status")
        assert status["events"]["failed"] == 1
        assert (svc.spool / "weird.json").is_dir() and (svc.spool / ".tmp-2.0-2").exists()
        log = svc.log_lines()
        assert any(line["event"] == "unreadable spool file" for line in log)
        assert any(line["event"] == "bad hook event" and line["source"] == "spool" for line in log)
        assert svc.proc is not None and svc.proc.poll() is None
    finally:
        svc.close()
