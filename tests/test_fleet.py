"""A fleet: several services, each with its own builder name and local inbox, sharing one real
PostgreSQL index; builds through the real hook and Nix. What one builder records, every service
answers, with the builder; PostgreSQL going away loses and spools nothing."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from buildsets import build_set, flake_repo, salt
from helpers import Nix, git, nix_string
from pgserver import PostgresServer
from servicectl import ServiceProcess, nix_build_json, run_hook, wait_for


def _lag(svc: ServiceProcess) -> dict[str, Any]:
    lag: dict[str, Any] = svc.call("status")["indexLag"]
    return lag


def test_two_builders_see_each_others_builds(nix: Nix, pg_server: PostgresServer, tmp_path: Path,
                                             system: str) -> None:
    url = pg_server.create_database()
    # a password in the URL (the server trusts the socket and ignores it) must never be shown
    with_password = url.replace("buildref@", "buildref:s3cret-pw@")
    repo = flake_repo(tmp_path, system)
    v1 = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "v1.0.0")
    ci1 = ServiceProcess(database=with_password, builder="ci-1",
                         repository=[{"name": "app", "path": str(repo)}])
    ci2 = ServiceProcess(database=url, builder="ci-2")
    try:
        ci1.start()
        ci2.start()
        built_app = nix_build_json(ci1.nix_env(nix.env), f"git+file://{repo}?rev={v1}")
        built_chain = nix_build_json(ci2.nix_env(nix.env), "-f", str(build_set(tmp_path, system)), "chain3")
        ci1.wait_idle()
        ci2.wait_idle()
        # ci-1 watches its repository: its refs reach the shared index, and ci-2 sees them
        wait_for(lambda: any(m["ref"] == "refs/tags/v1.0.0" for m in _refs(ci2)), what="ci-1's refs")

        # the deploy host's question, asked of the other builder
        found = ci2.call("lookup", {"repo": "app", "ref": "v1.0.0"})
        assert found["rev"] == v1
        assert [(b["drvPath"], b["builder"], b["outputs"]) for b in found["builds"]] == [
            (built_app[0]["drvPath"], "ci-1", built_app[0]["outputs"])]
        # (ci-2 answers from what is recorded: a path ci-1 recorded is on ci-1's machine)
        why = ci2.call("why", {"what": built_app[0]["outputs"]["out"]})
        assert (why["drvPath"], why["builder"]) == (built_app[0]["drvPath"], "ci-1")
        assert why["sources"] == []  # ci-1's checkout is not searched from ci-2's machine
        why = ci1.call("why", {"what": built_app[0]["outputs"]["out"]})
        assert why["builder"] == "ci-1" and why["sources"][0]["rev"] == v1

        # every service lists every builder's builds; each has only its own events
        expected = {str(b["drvPath"]): "ci-1" for b in built_app}
        chain = {str(e["drvPath"]) for e in ci2.events()}  # chain1..3 and multi, each by its hook
        assert len(chain) == 4 and str(built_chain[0]["drvPath"]) in chain
        expected |= dict.fromkeys(chain, "ci-2")
        for svc in (ci1, ci2):
            builds = {b["drvPath"]: b["builder"] for b in svc.call("builds", {"limit": 100})}
            assert builds == expected
        assert {e["drvPath"] for e in ci1.events()} == {str(b["drvPath"]) for b in built_app}
        shown = ci1.call("show", {"what": str(built_chain[0]["drvPath"])})
        assert [b["builder"] for b in shown["builds"]] == ["ci-2"]

        for svc, name in ((ci1, "ci-1"), (ci2, "ci-2")):
            status = svc.call("status")
            assert status["builder"] == name
            assert status["indexLag"] == {"events": 0, "seconds": 0.0, "reachable": True, "error": None}
            assert status["database"]["builds"] == 5 and status["database"]["bytes"] == -1
        status = ci1.call("status")
        assert status["database"]["path"] == url  # without its password
        assert "s3cret-pw" not in str(status) and "s3cret-pw" not in ci1.log_text()
    finally:
        ci1.close()
        ci2.close()


def _refs(svc: ServiceProcess) -> list[dict[str, Any]]:
    try:
        moves: list[dict[str, Any]] = svc.call("refs", {"repo": "app"})
    except AssertionError:  # not recorded yet
        return []
    return moves


def test_postgres_stopped_in_a_burst_loses_and_spools_nothing(nix: Nix, tmp_path: Path, system: str) -> None:
    """A burst of hook events (real hook processes, 8 at a time); PostgreSQL is stopped after the
    first 20 are acknowledged. Every hook is acknowledged at once and nothing is spooled; the
    service (and one started meanwhile) says how far behind the index is; once PostgreSQL is back
    every build is in the shared index, none failed."""
    n = 150
    expr = tmp_path / "burst.nix"
    expr.write_text(f"""builtins.genList (i: derivation {{
  name = "burst-${{toString i}}"; system = {nix_string(system)}; builder = "/bin/sh";
  args = [ "-c" "echo ${{toString i}} > $out" ]; salt = "{salt()}";
}}) {n}""")
    drvs = nix.instantiate(expr)
    assert len(set(drvs)) == n
    server = PostgresServer().start()
    url = server.create_database()
    svc = ServiceProcess(database=url, builder="b1")
    deploy = ServiceProcess(database=url, builder="deploy")
    try:
        svc.start()
        acked = 0
        lock = threading.Lock()
        twenty = threading.Event()
        durations: list[float] = []

        def hook(drv: str) -> bytes:
            nonlocal acked
            start = time.monotonic()
            proc = run_hook(svc.hook_env(), drv)
            assert proc.returncode == 0
            with lock:
                durations.append(time.monotonic() - start)
                acked += 1
                if acked >= 20:
                    twenty.set()
            return proc.stderr

        with ThreadPoolExecutor(8) as pool:
            results = [pool.submit(hook, drv) for drv in drvs]
            assert twenty.wait(60)
            server.stop()
            stopped_at = acked
            errors = [r.result() for r in results]
        assert stopped_at < n - 50, stopped_at  # most of the burst came while PostgreSQL was away
        assert errors == [b""] * n  # every hook acknowledged: nothing spooled, nothing said
        assert not svc.spool.exists() or not list(svc.spool.iterdir())
        assert max(durations) < 1.0  # the hook's own timeout: no ack waited on the network

        status = svc.call("status")
        assert status["events"]["received"] == n and status["events"]["failed"] == 0
        lag = status["indexLag"]
        assert lag["events"] > 0 and lag["seconds"] > 0 and lag["reachable"] is False
        assert lag["error"].startswith("error: the shared index is not available")
        assert status["database"]["builds"] == -1  # not known while away, not made up
        # a service starts, and answers status, with PostgreSQL away
        deploy.start()
        assert deploy.call("status")["indexLag"]["reachable"] is False

        server.start()
        wait_for(lambda: _lag(svc)["events"] == 0, timeout=60, what="the index to catch up")
        assert _lag(svc) == {"events": 0, "seconds": 0.0, "reachable": True, "error": None}
        counts = svc.call("status")["events"]
        assert counts == {"received": n, "indexed": n, "failed": 0, "pending": 0}
        # the other service reads every build from the shared index, once each
        builds = deploy.call("builds", {"limit": 1000})
        assert sorted(b["drvPath"] for b in builds) == sorted(drvs)
        assert {b["builder"] for b in builds} == {"b1"}
    finally:
        svc.close()
        deploy.close()
        server.close()
