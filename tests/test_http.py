"""The HTTP API (``[http] listen``) of a real service on 127.0.0.1 (and [::1]) with a free port, asked
with real HTTP requests: every read-only operation answers exactly what the query socket answers,
for real builds through the hook and a recorded repository; errors are ``{"error": "error: ..."}``
with the status of their kind; ``record`` is refused; ``/metrics`` is Prometheus text whose numbers
move as events arrive; ``--url`` and ``BUILDREF_URL`` make every query command print what it
prints over the socket; SIGTERM stops it cleanly."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from buildref.api.http import HttpServer, listening
from buildref.api.metrics import Metrics
from buildref.api.operations import OPERATIONS, Services
from buildref.config import HttpConfig, parse_config
from buildref.errors import BadConfig
from buildref.models import Status
from buildsets import flake_repo, salt
from helpers import Nix, assert_error_line, git
from servicectl import ServiceProcess, nix_build_json, run_hook, wait_for

READ_ONLY = sorted(name for name, op in OPERATIONS.items() if not op.writes)


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        assert self.headers["Content-Type"].startswith("application/json"), self.headers
        return json.loads(self.body)


def request(port: int, path: str, params: dict[str, Any] | None = None, method: str = "GET",
            headers: dict[str, str] | None = None, host: str = "127.0.0.1") -> Answer:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path + (f"?{urlencode(params)}" if params else ""), headers=headers or {})
        response = conn.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        conn.close()


def api(port: int, method: str, params: dict[str, Any] | None = None) -> Any:
    answer = request(port, f"/api/v1/{method}", params)
    assert answer.status == 200, answer.body
    return answer.json()


def socket_error(service: ServiceProcess, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """The error the query socket answers (``ServiceProcess.call`` asserts there is none)."""
    line = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode() + b"\n"
    error: dict[str, Any] = json.loads(service.raw(service.query_socket, line))["error"]
    return error


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    environ = {k: v for k, v in os.environ.items() if k not in ("BUILDREF_URL", "BUILDREF_SOCKET")}
    return subprocess.run([sys.executable, "-m", "buildref", *args], capture_output=True, check=False,
                          env={**environ, **(env or {})})


def without_uptime(status: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if k != "uptime"}


@dataclass(frozen=True)
class World:
    """A service with the HTTP API, a repository 'app' recorded, v1 built through the hook."""

    service: ServiceProcess
    port: int
    url: str
    repo: Path
    v1: str
    drv: str
    out: str
    nar_hash: str  # v1's tree, SRI
    nix32: str


@pytest.fixture(scope="module")
def world(nix: Nix, system: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    repo = flake_repo(tmp_path_factory.mktemp("http"), system)
    port = free_port()
    svc = ServiceProcess(repository=[{"name": "app", "path": str(repo)}],
                         http={"listen": f"127.0.0.1:{port}"})
    try:
        svc.start()
        v1 = git(repo, "rev-parse", "HEAD")
        git(repo, "tag", "v1")
        built = nix_build_json(svc.nix_env(nix.env), f"git+file://{repo}?rev={v1}")
        svc.wait_idle()
        svc.call("record", {"repo": "app"})
        info = json.loads(cli("hash", str(repo), "--rev", v1, "--json").stdout)
        nix32 = nix.run("nix", "hash", "to-base32", info["narHash"]).decode().strip()
        yield World(svc, port, f"http://127.0.0.1:{port}", repo, v1, built[0]["drvPath"],
                    built[0]["outputs"]["out"], info["narHash"], nix32)
    finally:
        svc.close()


def test_every_read_only_operation_answers_as_on_the_socket(world: World) -> None:
    svc, w = world.service, world
    at = time.time()
    asked: dict[str, list[dict[str, Any]]] = {
        "status": [{}],
        "builds": [{}, {"limit": 1}, {"repo": "app"}, {"since": 1.5, "limit": 5}],
        "events": [{}, {"state": "indexed"}, {"state": "failed", "limit": 3}],
        "refs": [{"repo": "app"}],
        "lookup": [{"repo": "app", "ref": "main"}, {"repo": "app", "ref": "v1"},
                   {"repo": "app", "ref": w.v1[:10]}, {"repo": "app", "ref": "main", "at": at},
                   {"repo": "app", "ref": "main", "name": "from-*", "direct": True},
                   {"repo": str(w.repo), "ref": "main"}],
        "why": [{"what": w.out}, {"what": w.nar_hash}, {"what": w.nix32}],
        "show": [{"what": w.drv}, {"what": w.out}],
    }
    assert sorted(asked) == READ_ONLY  # a new read-only operation must be added here
    for method, cases in asked.items():
        for params in cases:
            over_http = api(w.port, method, params)
            over_socket = svc.call(method, params)
            if method == "status":
                over_http, over_socket = without_uptime(over_http), without_uptime(over_socket)
            assert over_http == over_socket, (method, params)
    # the answers hold the real data: not two equal empty lists
    lookup = api(w.port, "lookup", {"repo": "app", "ref": "v1"})
    assert lookup["rev"] == w.v1 and [b["drvPath"] for b in lookup["builds"]] == [w.drv]
    assert [s["rev"] for s in api(w.port, "why", {"what": w.nar_hash})["sources"]] == [w.v1]
    assert api(w.port, "why", {"what": w.out})["drvPath"] == w.drv
    # a parameter given as text is read as the model's type: '1' for an integer, 'true' for a flag
    assert api(w.port, "builds", {"limit": "1"}) == svc.call("builds", {"limit": 1})


def test_errors_have_the_status_of_their_kind_and_the_sockets_message(world: World) -> None:
    svc, port = world.service, world.port
    cases = [  # method, params, HTTP status, JSON-RPC code of the same request on the socket
        ("lookup", {"repo": "app"}, 400, -32602),  # a missing parameter
        ("lookup", {"repo": "nowhere", "ref": "main"}, 404, -32004),  # an unknown repository
        ("lookup", {"repo": "app", "ref": "nope"}, 404, -32004),  # an unknown ref
        ("why", {"what": "not-a-hash"}, 400, -32602),
        ("why", {"what": "/nix/store/" + "a" * 32 + "-x"}, 404, -32004),
        ("builds", {"limit": 0}, 400, -32602),  # out of bounds
        ("builds", {"limit": "many"}, 400, -32602),  # not an integer
        ("status", {"verbose": 1}, 400, -32602),  # an unknown parameter
        ("nope", {}, 404, -32601),  # an unknown method
        ("record", {"repo": "app"}, 403, -32003),  # for local users only
    ]
    for method, params, status, code in cases:
        answer = request(port, f"/api/v1/{method}", params)
        body = answer.json()
        assert answer.status == status and list(body) == ["error"], (method, params, body)
        assert body["error"].startswith("error: ")
        if method == "record":
            assert "not served here" in body["error"]
            continue  # on the socket, record is allowed (and would record)
        assert socket_error(svc, method, params) == {"code": code, "message": body["error"]}, params

    # what is not an operation: the same JSON error shape
    for path in ("/", "/api/v2/status", "/api/v1/", "/api/v1/status/x"):
        answer = request(port, path)
        assert answer.status == 404, (path, answer.body)
        assert answer.json()["error"].startswith(f"error: no endpoint '{path}'")
    twice = request(port, "/api/v1/builds?limit=1&limit=2")
    assert twice.status == 400 and twice.json() == {"error": "error: 'limit' is given more than once"}
    posted = request(port, "/api/v1/status", method="POST")
    assert posted.status == 405 and posted.headers["Allow"] == "GET, HEAD"
    assert posted.json()["error"].startswith("error: POST is not served here")
    head = request(port, "/api/v1/status", method="HEAD")
    assert head.status == 200 and head.body == b""
    # record stays refused whatever the parameters, and nothing was recorded by asking
    refs_before = svc.call("refs", {"repo": "app"})
    assert request(port, "/api/v1/record", {"repo": "app", "refs": "main"}).status == 403
    assert svc.call("refs", {"repo": "app"}) == refs_before


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_are_prometheus_text_and_move_with_events(nix: Nix, world: World, system: str,
                                                          tmp_path: Path) -> None:
    svc, port = world.service, world.port
    svc.wait_idle()
    scrape = request(port, "/metrics")
    assert scrape.status == 200 and scrape.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = list(text_string_to_metric_families(scrape.body.decode()))
    assert families and all(f.name.startswith("buildref_") for f in families)
    names = {f.name for f in families}
    assert {"buildref_events", "buildref_queue_depth", "buildref_contents_pending", "buildref_http_requests",
            "buildref_shared_index_lag_seconds", "buildref_received_events", "buildref_info"} <= names
    before = samples(scrape.body.decode())
    status = svc.call("status")
    for state in ("pending", "indexed", "failed"):
        assert before[("buildref_events", (("state", state),))] == status["events"][state]
    assert before[("buildref_queue_depth", ())] == status["queueDepth"] == 0
    assert before[("buildref_shared_index_lag_seconds", ())] == 0  # SQLite only: no shared index
    assert before[("buildref_index_entries", (("kind", "builds"),))] == status["database"]["builds"]

    # events arrive: one built (indexed), one that is not a derivation (failed)
    derivation = tmp_path / "d.nix"
    derivation.write_text(f'derivation {{ name = "metric-{salt()}"; system = "{system}"; builder = "/bin/sh";'
                          ' args = [ "-c" "echo > $out" ]; }')
    nix_build_json(svc.nix_env(nix.env), "-f", str(derivation))
    assert run_hook(svc.hook_env(), "/nix/store/" + "b" * 32 + "-gone.drv").returncode == 0
    svc.wait_idle()
    wait_for(lambda: svc.call("status")["events"]["failed"] == status["events"]["failed"] + 1,
             what="the failed event")
    after = samples(request(port, "/metrics").body.decode())
    state = (("state", "indexed"),)
    assert after[("buildref_events", state)] == before[("buildref_events", state)] + 1
    state = (("state", "failed"),)
    assert after[("buildref_events", state)] == before[("buildref_events", state)] + 1
    assert after[("buildref_received_events_total", ())] == before[("buildref_received_events_total", ())] + 2
    assert after[("buildref_index_entries", (("kind", "builds"),))] > before[
        ("buildref_index_entries", (("kind", "builds"),))]

    # HTTP requests by route and code: this test's scrape is counted, so are errors; an unknown path
    # is "other", never its own label value
    def requests(route: str, code: str) -> float:
        return after.get(("buildref_http_requests_total", (("code", code), ("route", route))), 0)

    assert requests("/metrics", "200") >= 1
    ok, missing = requests("/api/v1/status", "200"), requests("other", "404")
    request(port, "/api/v1/status")
    request(port, f"/no/such/{salt()}")
    later = samples(request(port, "/metrics").body.decode())
    assert later[("buildref_http_requests_total", (("code", "200"), ("route", "/api/v1/status")))] == ok + 1
    assert later[("buildref_http_requests_total", (("code", "404"), ("route", "other")))] == missing + 1
    assert not any(dict(labels).get("route", "").startswith("/no/") for _, labels in later)

    # OpenMetrics when a scraper asks for it
    open_scrape = request(port, "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert open_scrape.headers["Content-Type"].startswith("application/openmetrics-text")
    assert "buildref_queue_depth" in {f.name for f in openmetrics_families(open_scrape.body.decode())}
    assert request(port, "/metrics", {"x": 1}).status == 400


QUERIES = [  # every query command, with --json and without
    ("status",), ("builds",), ("builds", "--limit", "1"), ("builds", "--repo", "app"), ("events",),
    ("events", "--state", "indexed"), ("refs", "app"), ("lookup", "app", "v1"),
    ("lookup", "app", "main", "--direct", "--name", "from-*"), ("why", "{out}"), ("why", "{nar_hash}"),
    ("show", "{drv}"),
]


def test_url_and_buildref_url_give_every_query_command_the_sockets_output(world: World) -> None:
    svc, w = world.service, world
    svc.wait_idle()
    socket_env = {"BUILDREF_SOCKET": str(svc.query_socket)}
    for command in QUERIES:
        argv = [a.format(out=w.out, nar_hash=w.nar_hash, drv=w.drv) for a in command]
        for json_flag in (["--json"], []):
            over_socket = cli(*argv, *json_flag, env=socket_env)
            assert over_socket.returncode == 0 and over_socket.stdout, over_socket.stderr
            ways = [cli(*argv, *json_flag, "--url", w.url), cli("--url", w.url + "/", *argv, *json_flag),
                    cli(*argv, *json_flag, env={"BUILDREF_URL": w.url}),
                    # BUILDREF_URL wins over BUILDREF_SOCKET (it points at a socket that is not there)
                    cli(*argv, *json_flag, env={"BUILDREF_URL": w.url, "BUILDREF_SOCKET": "/nonexistent"})]
            for proc in ways:
                assert proc.returncode == 0, proc.stderr.decode()
                if command[0] == "status":
                    if json_flag:
                        assert without_uptime(json.loads(proc.stdout)) == without_uptime(
                            json.loads(over_socket.stdout))
                    else:  # the first line says how long it has been up
                        assert proc.stdout.splitlines()[1:] == over_socket.stdout.splitlines()[1:]
                else:
                    assert proc.stdout == over_socket.stdout, argv
    # an explicit --socket wins over BUILDREF_URL
    dead = f"http://127.0.0.1:{free_port()}"
    proc = cli("builds", "--json", "--socket", str(svc.query_socket), env={"BUILDREF_URL": dead})
    assert proc.returncode == 0 and json.loads(proc.stdout) == svc.call("builds", {})


def test_cli_errors_over_http_are_the_sockets_error_lines(world: World, tmp_path: Path) -> None:
    svc, w = world.service, world
    socket_env = {"BUILDREF_SOCKET": str(svc.query_socket)}
    for argv in (("lookup", "app", "nope"), ("lookup", str(tmp_path), "v1"), ("why", "not-a-hash"),
                 ("why", "/nix/store/" + "a" * 32 + "-x"), ("show", "/nix/store/" + "c" * 32 + "-y.drv"),
                 ("refs", "nowhere"), ("builds", "--limit", "0")):
        over_socket = cli(*argv, env=socket_env)
        assert_error_line(over_socket)
        over_http = cli(*argv, "--url", w.url)
        assert_error_line(over_http)
        assert (over_http.returncode, over_http.stderr) == (over_socket.returncode, over_socket.stderr)

    # nothing listens there: one clean line, exit 1
    dead = f"http://127.0.0.1:{free_port()}"
    for proc in (cli("status", "--url", dead), cli("lookup", "app", "main", env={"BUILDREF_URL": dead})):
        assert_error_line(proc, f"cannot reach buildref at {dead}", "refused")
        assert proc.returncode == 1
    # something that is not buildref answers there
    with socket.socket() as not_http:
        not_http.bind(("127.0.0.1", 0))
        not_http.listen()
        proc = subprocess.Popen([sys.executable, "-m", "buildref", "status", "--url",
                                 f"http://127.0.0.1:{not_http.getsockname()[1]}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        conn, _ = not_http.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"SSH-2.0-OpenSSH\r\n")
        _, err = proc.communicate(timeout=30)
    assert_error_line(subprocess.CompletedProcess([], proc.returncode, b"", err), "did not answer in HTTP")
    for bad in ("ftp://host", "buildhost:8745", "http://host/?x=1"):
        assert_error_line(cli("status", "--url", bad), "is not a buildref URL")
    assert_error_line(cli("status", "--url", w.url, "--socket", str(svc.query_socket)), "not both")

    # record and import are for local users: refused with --url (and no event sent), on the
    # socket with BUILDREF_URL
    assert_error_line(cli("record", "app", "--url", w.url), "'record' asks the local service")
    received = svc.call("status")["events"]["received"]
    assert_error_line(cli("import", w.drv, "--url", w.url, "--hook-socket", str(svc.hook_socket)),
                      "'import' asks the local service")
    assert svc.call("status")["events"]["received"] == received
    proc = cli("record", "app", "--json", env={"BUILDREF_URL": w.url, **socket_env})
    assert proc.returncode == 0 and json.loads(proc.stdout)["repository"] == "app"


def test_connections_are_bounded_and_idle_ones_closed(tmp_path: Path) -> None:
    port = free_port()
    svc = ServiceProcess(http={"listen": f"127.0.0.1:{port}", "max_connections": 2}, idle_timeout=1)
    try:
        svc.start()
        held = []
        for _ in range(2):  # two keep-alive connections, each with a request answered
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/api/v1/status")
            assert conn.getresponse().read()
            held.append(conn)
        refused = request(port, "/api/v1/status")
        assert refused.status == 503 and refused.json() == {"error": "error: too many connections; try again"}
        for conn in held:
            conn.close()
        wait_for(lambda: request(port, "/api/v1/status").status == 200, what="a free connection")

        # a connection that says nothing is closed after idle_timeout, like the socket's
        with socket.create_connection(("127.0.0.1", port), timeout=10) as quiet:
            started = time.monotonic()
            assert quiet.recv(1024) == b""
            assert time.monotonic() - started < 5
        assert svc.stop() == 0
    finally:
        svc.close()


def test_sigterm_stops_the_http_server_cleanly(tmp_path: Path) -> None:
    port = free_port()
    svc = ServiceProcess(http={"listen": f"127.0.0.1:{port}"})
    try:
        svc.start()
        assert api(port, "status")["pid"] == svc.proc.pid  # type: ignore[union-attr]
        kept = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # keep-alive, idle at the stop
        kept.request("GET", "/api/v1/builds")
        assert kept.getresponse().read() == b"[]"
        partial = socket.create_connection(("127.0.0.1", port), timeout=10)  # a request half sent
        partial.sendall(b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        assert svc.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 15
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert partial.recv(65536) == b""  # closed, not answered half-way
        partial.close()
        kept.close()
        assert [line["event"] for line in svc.log_lines()][-2:] == ["stopping", "stopped"]
        assert not any(line.get("level") == "error" for line in svc.log_lines())
    finally:
        svc.close()


def test_shutdown_lets_requests_finish_then_cancels_them() -> None:
    """The server as app.py runs it, in this test's event loop: a scrape whose status takes longer
    than the grace is cancelled (and its connection closed) after the grace; one that finishes
    within it is answered. The status is this test's own coroutine, to make a request slow."""

    async def scenario(status_takes: float, grace: float) -> tuple[int, bytes, float]:
        finished = asyncio.Event()

        async def status() -> Status:
            await asyncio.sleep(status_takes)
            finished.set()
            return Status.from_json(json.loads(STATUS_JSON))

        with listening(HttpConfig("127.0.0.1", free_port())) as sockets:
            port = sockets[0].getsockname()[1]
            # /metrics needs nothing but the status, so no operation (and no Services) is built
            server = HttpServer(sockets, cast(Services, None), status, Metrics(), lambda *_: None,
                                idle_timeout=10, max_connections=10)
            await server.start()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.2)  # the request is in flight
            started = time.monotonic()
            cancelled = await server.drain(grace)
            took = time.monotonic() - started
            answer = await reader.read()
            writer.close()
            assert finished.is_set() == (cancelled == 0)
            return cancelled, answer, took

    cancelled, answer, took = asyncio.run(scenario(0.5, 5.0))
    assert cancelled == 0 and answer.startswith(b"HTTP/1.1 200 OK") and b"buildref_queue_depth 0" in answer
    assert took < 4
    cancelled, answer, took = asyncio.run(scenario(30.0, 1.0))
    assert cancelled == 1 and answer == b"" and 0.9 < took < 5


STATUS_JSON = """{"version": "0", "pid": 1, "startedAt": 0, "uptime": 1, "queueDepth": 0,
  "events": {"received": 0, "indexed": 0, "failed": 0, "pending": 0},
  "sinceStart": {"received": 0, "indexed": 0, "failed": 0, "commitGroups": 0}, "spoolFiles": 0,
  "lastEvent": null, "database": {"path": "x", "bytes": 0, "derivations": 0, "outputs": 0, "builds": 0}}"""


def test_listen_forms_ipv6_and_a_taken_port(tmp_path: Path) -> None:
    def listen(value: object, **more: object) -> tuple[str, int]:
        http = parse_config({"http": {"listen": value, **more}}).http
        assert http is not None
        return http.host, http.port

    assert parse_config({}).http is None  # off unless configured
    assert listen("127.0.0.1:8745") == ("127.0.0.1", 8745)
    assert listen("[::1]:8745") == ("::1", 8745)
    assert listen("[0:0::1]:1") == ("::1", 1)
    assert listen("localhost:65535") == ("localhost", 65535)
    bad = {"::1:8745": "brackets", "127.0.0.1": "ADDRESS:PORT", "127.0.0.1:0": "1 to 65535",
           "127.0.0.1:65536": "1 to 65535", "127.0.0.1:+80": "ADDRESS:PORT", "[127.0.0.1]:80": "ADDRESS:PORT",
           "host name:80": "ADDRESS:PORT", "[::1]8745": "ADDRESS:PORT", ":8745": "ADDRESS:PORT", 8745: "str"}
    for value, fragment in bad.items():
        with pytest.raises(BadConfig, match=r"http\.listen") as raised:
            listen(value)
        assert fragment in str(raised.value), (value, str(raised.value))
    with pytest.raises(BadConfig, match=r"http\.listen: required"):
        parse_config({"http": {}})
    with pytest.raises(BadConfig, match=r"unknown config key http\.port"):
        parse_config({"http": {"listen": "127.0.0.1:1", "port": 2}})
    with pytest.raises(BadConfig, match="max_connections"):
        parse_config({"http": {"listen": "127.0.0.1:1", "max_connections": 0}})

    # a real service on [::1]: the CLI asks it by its bracketed URL
    port = free_port("::1")
    svc = ServiceProcess(http={"listen": f"[::1]:{port}"})
    try:
        svc.start()
        proc = cli("status", "--json", "--url", f"http://[::1]:{port}")
        assert proc.returncode == 0, proc.stderr.decode()
        assert json.loads(proc.stdout)["pid"] == svc.proc.pid  # type: ignore[union-attr]
        assert svc.stop() == 0
    finally:
        svc.close()
    # "[::]" is every address, IPv4 too (asked here on loopback only)
    port = free_port("::")
    svc = ServiceProcess(http={"listen": f"[::]:{port}"})
    try:
        svc.start()
        for url in (f"http://127.0.0.1:{port}", f"http://[::1]:{port}"):
            assert cli("status", "--url", url).returncode == 0, url
        assert svc.stop() == 0
    finally:
        svc.close()

    # a port already taken stops the service at start with one error line, sockets cleaned up
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        svc = ServiceProcess(http={"listen": f"127.0.0.1:{port}"})
        try:
            svc.start(wait=False)
            assert svc.proc is not None
            assert svc.proc.wait(timeout=30) == 1
            lines = [line for line in svc.log_text().splitlines() if line.startswith("error:")]
            assert lines == [f"error: cannot listen on 127.0.0.1:{port}: Address already in use"]
            assert not svc.query_socket.exists() and not svc.hook_socket.exists()
        finally:
            svc.close()
