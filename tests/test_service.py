"""The hook, the service and its index, end to end with real Nix builds (single-user: root)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from buildsets import build_set, flake_repo, salt
from helpers import Nix, assert_error_line
from servicectl import ServiceProcess, nix_build_json, run_hook, wait_for


def buildref_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "buildref", *args], capture_output=True, check=False,
                          env={**os.environ, **(env or {})})


def assert_recorded(service: ServiceProcess, built: list[dict[str, object]]) -> None:
    """Each build ``nix build --json`` printed is in the index with exactly those outputs."""
    recorded = service.builds()
    for item in built:
        drv = item["drvPath"]
        assert isinstance(drv, str)
        assert recorded.get(drv) == item["outputs"], (drv, recorded.get(drv), service.log_text())


def test_builds_are_recorded_with_their_outputs(nix: Nix, service: ServiceProcess, system: str,
                                                tmp_path: Path) -> None:
    env = service.nix_env(nix.env)
    nix_file = build_set(tmp_path, system)
    built = nix_build_json(env, "-f", str(nix_file), "multi", "fod", "chain3")
    repo = flake_repo(tmp_path, system)
    built += nix_build_json(env, f"git+file://{repo}")
    service.wait_idle()
    assert_recorded(service, built)

    # the chain's inputs were built too, each reported by its own hook run
    chain = {d: o for d, o in service.builds().items() if "-chain" in d}
    assert len(chain) == 3
    status = service.call("status")
    assert status["events"]["failed"] == 0
    assert status["events"]["indexed"] == status["events"]["received"] >= 6

    # what the index holds, as `buildref show --json` gives it
    env = {"BUILDREF_SOCKET": str(service.query_socket)}
    shown = {}
    pending = [str(item["drvPath"]) for item in built]
    while pending:
        proc = buildref_cli("show", pending.pop(), "--json", env=env)
        assert proc.returncode == 0, proc.stderr.decode()
        info = json.loads(proc.stdout)
        shown[info["drvPath"]] = info
        pending += [p for p in info["inputDrvs"] if p not in shown]
    # the closure graph: chain3 -> chain2 -> chain1, chain3 -> multi (dev only)
    edges = {(info["name"], shown[path]["name"], tuple(outs))
             for info in shown.values() for path, outs in info["inputDrvs"].items()}
    shown = {info["name"]: info for info in shown.values()}
    assert {("chain3", "chain2", ("out",)), ("chain2", "chain1", ("out",)),
            ("chain3", "multi", ("dev",))} <= edges
    assert shown["fod"]["fixed"]["mode"] == "flat" and shown["fod"]["fixed"]["hash"].startswith("sha256-")
    assert shown["multi"]["fixed"] is None and set(shown["multi"]["outputs"]) == {"out", "dev"}
    # the flake's derivation uses the flake's source as an input source
    assert any(p.endswith("-source") for p in shown["from-flake"]["inputSrcs"])
    # an output path finds its derivation too
    by_output = buildref_cli("show", str(built[0]["outputs"]["out"]), "--json", env=env)
    assert json.loads(by_output.stdout)["drvPath"] == built[0]["drvPath"]

    # one log line per build, with the drv and its timing
    indexed = [line for line in service.log_lines() if line.get("event") == "indexed"]
    assert {line["drv"] for line in indexed} >= {item["drvPath"] for item in built}
    assert all(isinstance(line["ms"], float | int) for line in indexed)


def test_content_addressed_outputs_come_from_nix(nix: Nix, service: ServiceProcess, system: str,
                                                 tmp_path: Path) -> None:
    s = salt()
    (tmp_path / "ca.nix").write_text(f"""rec {{
  ca = derivation {{ name = "ca"; system = "{system}"; builder = "/bin/sh"; args = ["-c" "echo {s} > $out"];
         __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; }};
  user = derivation {{ name = "user"; system = "{system}"; builder = "/bin/sh";
         args = ["-c" "read x < ${{ca}}; echo $x > $out"]; }};
}}""")
    built = nix_build_json(service.nix_env(nix.env), "-f", str(tmp_path / "ca.nix"), "ca", "user")
    service.wait_idle()
    assert_recorded(service, built)
    log = service.log_text()
    assert "realisation key mismatch" not in log and "no realisations" not in log


def test_sockets_modes_and_config_errors(service: ServiceProcess, tmp_path: Path) -> None:
    assert stat.S_IMODE(os.stat(service.hook_socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(service.query_socket).st_mode) == 0o666

    bad = tmp_path / "bad.toml"
    bad.write_text('stat_dir = "/tmp/x"\n')
    assert_error_line(buildref_cli("serve", "--config", str(bad)), "unknown config key stat_dir")
    bad.write_text('[hook]\nmode = "rw"\n')
    assert_error_line(buildref_cli("serve", "--config", str(bad)), "hook.mode")
    bad.write_text('database = "postgresql://x/y"\n')
    assert_error_line(buildref_cli("serve", "--config", str(bad)), "only sqlite")
    # a second service on the same sockets (its own state directory: one on the same state
    # directory stops before, test_state_faults.py) refuses to start, and the first keeps serving
    second = ServiceProcess(hook={"socket": str(service.hook_socket)},
                            query={"socket": str(service.query_socket)})
    try:
        second.start(wait=False)
        assert second.proc is not None and second.proc.wait(timeout=20) == 1
        assert "another service is listening" in second.log_text()
        assert service.call("status")["pid"] != second.proc.pid
    finally:
        second.close()


def test_status_and_builds_cli(nix: Nix, service: ServiceProcess, system: str, tmp_path: Path) -> None:
    built = nix_build_json(service.nix_env(nix.env), "-f", str(build_set(tmp_path, system)), "multi")
    service.wait_idle()
    env = {"BUILDREF_SOCKET": str(service.query_socket)}
    status = json.loads(buildref_cli("status", "--json", env=env).stdout)
    assert status["events"]["indexed"] == 1 and status["spoolFiles"] == 0
    assert status["database"]["derivations"] == 1 and status["database"]["bytes"] > 0
    assert status["lastEvent"]["drvPath"] == built[0]["drvPath"]
    text = buildref_cli("status", "--socket", str(service.query_socket)).stdout.decode()
    assert "1 indexed" in text
    builds = json.loads(buildref_cli("builds", "--json", "--since", "10m", env=env).stdout)
    assert [b["outputs"] for b in builds] == [built[0]["outputs"]]
    assert json.loads(buildref_cli("builds", "--json", "--since", "2999-01-01", env=env).stdout) == []
    lines = buildref_cli("builds", env=env).stdout.decode().splitlines()
    assert len(lines) == 1 and built[0]["drvPath"] in lines[0]
    gone = buildref_cli("status", "--socket", str(tmp_path / "nothing.sock"))
    assert_error_line(gone, "cannot reach buildref")


def test_import_records_earlier_builds(nix: Nix, system: str, tmp_path: Path) -> None:
    nix_file = build_set(tmp_path, system)
    built = nix_build_json(nix.env, "-f", str(nix_file), "chain3", "fod")  # no hook: service not there
    unbuilt = nix.instantiate(_salted(tmp_path, system))[0]  # instantiated, never built
    svc = ServiceProcess().start()
    try:
        env = {"BUILDREF_SOCKET": str(svc.query_socket), "BUILDREF_HOOK_SOCKET": str(svc.hook_socket)}
        drvs = [str(b["drvPath"]) for b in built]
        proc = buildref_cli("import", *drvs, unbuilt, env=env)
        assert proc.returncode == 0, proc.stderr.decode()
        assert "3 of 3 derivations recorded" in proc.stderr.decode()
        recorded = svc.builds()
        for b in built:
            assert recorded[str(b["drvPath"])] == b["outputs"]
        assert recorded[unbuilt] == {}  # its outputs are not in the store
        # chain3's inputs came along, though only chain3 was imported
        names, pending = set(), [*drvs, unbuilt]
        while pending:
            info = svc.call("show", {"what": pending.pop()})
            names.add(info["name"])
            pending.extend(info["inputDrvs"])
        assert {"chain1", "chain2", "chain3", "multi", "fod"} <= names
        assert svc.call("status")["database"]["derivations"] == len(names)
        bad = buildref_cli("import", "/nix/store/not-a-drv", env=env)
        assert_error_line(bad, "not a store path")
    finally:
        svc.close()


def test_hook_exits_zero_and_says_why_when_it_cannot_deliver(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    # no service and a spool "directory" that is a file: nothing can be done, yet the exit is 0
    proc = run_hook({"BUILDREF_HOOK_SOCKET": str(tmp_path / "none.sock"),
                     "BUILDREF_SPOOL_DIR": str(blocker / "spool")}, "/nix/store/x.drv")
    assert proc.returncode == 0
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and "LOST" in err
    # a socket that accepts and never answers: bounded by BUILDREF_HOOK_TIMEOUT, then spooled
    import socket
    import time

    path = tmp_path / "mute.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:
        mute.bind(str(path))
        mute.listen(1)
        start = time.monotonic()
        proc = run_hook({"BUILDREF_HOOK_SOCKET": str(path), "BUILDREF_SPOOL_DIR": str(tmp_path / "spool"),
                         "BUILDREF_HOOK_TIMEOUT": "0.3"}, "/nix/store/x.drv")
        elapsed = time.monotonic() - start
    assert proc.returncode == 0 and elapsed < 3
    assert "spooled" in proc.stderr.decode()
    files = list((tmp_path / "spool").iterdir())
    assert len(files) == 1 and json.loads(files[0].read_text())["drv"] == "/nix/store/x.drv"
    # the console script is the same hook
    script = shutil.which("buildref-hook")
    assert script is not None
    env = {"BUILDREF_HOOK_SOCKET": str(tmp_path / "none.sock"), "BUILDREF_SPOOL_DIR": str(tmp_path / "spool"),
           "DRV_PATH": "/nix/store/y.drv"}
    proc = subprocess.run([script], env=env, capture_output=True, check=False)
    assert proc.returncode == 0 and "spooled" in proc.stderr.decode()
    assert len(list((tmp_path / "spool").iterdir())) == 2


def test_service_down_builds_spool_and_are_recorded_at_start(nix: Nix, system: str, tmp_path: Path) -> None:
    svc = ServiceProcess()  # configured, not running
    try:
        env = svc.nix_env(nix.env)
        built = nix_build_json(env, "-f", str(build_set(tmp_path, system)), "chain3", "fod")
        assert len(list(svc.spool.glob("*.json"))) == 5  # chain1-3, multi, fod: builds still succeeded
        svc.start()
        status = svc.wait_idle()
        assert status["events"] == {"received": 5, "indexed": 5, "failed": 0, "pending": 0}
        assert_recorded(svc, built)
        assert not list(svc.spool.iterdir())

        # while it runs, a file landing in the spool is picked up without a restart (watchdog)
        later = nix.instantiate(_salted(tmp_path, system))[0]
        proc = run_hook({"BUILDREF_HOOK_SOCKET": str(svc.base / "elsewhere.sock"),
                         "BUILDREF_SPOOL_DIR": str(svc.spool)}, later)
        assert proc.returncode == 0 and "spooled" in proc.stderr.decode()
        wait_for(lambda: later in svc.builds(), what="the spooled event to be recorded")
        assert not list(svc.spool.glob("*.json"))
        sources = {e["drvPath"]: e["source"] for e in svc.events()}
        assert sources[later] == "spool" and sources[str(built[0]["drvPath"])] == "spool"
        assert svc.events(state="failed") == []
    finally:
        svc.close()


def _salted(directory: Path, system: str) -> Path:
    path = directory / f"one-{salt()}.nix"
    path.write_text(f'derivation {{ name = "one"; system = "{system}"; builder = "/bin/sh"; '
                    f'salt = "{salt()}"; }}')
    return path


def test_shared_inputs_are_read_once(nix: Nix, service: ServiceProcess, system: str, tmp_path: Path) -> None:
    """Six layers of three derivations, each using all three below: 3^6 paths through the graph,
    19 derivations. The closure walk must see each once (a bench once ran out of memory here)."""
    s = salt()
    layers = ["[ ]"]
    for depth in range(6):
        below = layers[-1]
        layers.append("[ " + " ".join(
            f'(derivation {{ name = "l{depth}-{i}"; system = "{system}"; builder = "/bin/sh"; '
            f'salt = "{s}"; deps = {below}; }})' for i in range(3)) + " ]")
    path = tmp_path / "diamonds.nix"
    path.write_text(f"""let l = {layers[-1]}; in derivation {{
  name = "apex"; system = "{system}"; builder = "/bin/sh"; salt = "{s}"; deps = l; }}""")
    apex = nix.instantiate(path)[0]
    proc = buildref_cli("import", apex, env={"BUILDREF_SOCKET": str(service.query_socket),
                                             "BUILDREF_HOOK_SOCKET": str(service.hook_socket)})
    assert proc.returncode == 0, proc.stderr.decode()
    line = next(x for x in service.log_lines() if x.get("event") == "indexed" and x["drv"] == apex)
    assert line["new_derivations"] == 19
    assert service.call("status")["database"]["derivations"] == 19
