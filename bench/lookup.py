"""Lookup and why latency at the service on a large index, and ref-move -> source-indexed latency.

Usage: python bench/lookup.py [--backend sqlite|postgres] [--outputs N] [--revisions N] [--queries N]
                              [--files N]

1. A synthetic index, written through the storage interfaces into the service's index (SQLite, or
   a PostgreSQL server started here, with the service's local inbox): N revisions of one
   repository (each with its root and two directories), one application derivation per revision
   whose source holds the revision's root, a wrapper above each (distance 1), shared dependencies
   below, two outputs per derivation and a build of each, and the history of `main` through every
   revision plus a tag every 10 revisions. Then `lookup` (random tag) and `why` (random output)
   through the query socket, one connection per request as the CLI does: p50 and p99. Goal: p99
   <= 5 ms. Then the hook's ack latency (p50, p99), alone and beside 16 processes doing lookups
   as fast as they can.
2. A real repository of N files: the time from a commit (ref move) until `refs` shows it and its
   sources are in the index (the watcher's path). Reported, no reference.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from buildref.models import RefChange
from buildref.store.api import (
    BuildRecord,
    ContentRecord,
    ContentState,
    DerivationRecord,
    NewEvent,
    RepositoryRecord,
    RevisionRecord,
    Store,
    TreeRecord,
)
from buildref.store.fleet import FleetStore
from buildref.store.sqlite import SqliteStore
from common import start_service
from pgserver import PostgresServer

BATCH = 2000
BUILDER = "bench"
REPO_PATH = "/nonexistent/bench-app"  # not at hand: lookups answer from what is recorded


def fake_path(kind: str, i: int, name: str) -> str:
    digest = f"{kind}{i:031d}"[-32:].replace("e", "a").replace("o", "b").replace("u", "c").replace("t", "d")
    return f"/nix/store/{digest}-{name}"


def drv_path(d: int) -> str:
    return fake_path("d", d, f"pkg{d}.drv")


def _form(i: int, sub: str) -> bytes:
    return hashlib.sha1(f"{i}/{sub}".encode()).digest()


def _nar_hash(i: int, sub: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(f"{i}/{sub}".encode()).digest()).decode()


class Backend:
    """Where the synthetic index goes, and the service settings that use it."""

    def __init__(self, name: str, state: Path) -> None:
        self.name = name
        self.state = state
        self.server: PostgresServer | None = None
        self.settings: dict[str, Any] = {}
        if name == "postgres":
            self.server = PostgresServer().start()
            self.settings = {"database": self.server.create_database("lookup"), "builder": BUILDER}

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[Store]:
        """The store the service will open, for loading."""
        inbox = str(self.state / "buildref.db")
        store: Store
        if self.server is not None:
            store = await FleetStore.open(self.settings["database"], inbox, BUILDER)
        else:
            store = await SqliteStore.open(inbox, durable=False)
        try:
            yield store
        finally:
            await store.close()

    def analyze(self) -> None:
        """Table statistics, as autovacuum gathers them after a load."""
        if self.server is not None:
            self.server.psql("ANALYZE", self.server.name_of(self.settings["database"]))

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def build_index(backend: Backend, revisions: int, outputs: int) -> dict[str, Any]:
    """The synthetic index, written through the storage interfaces (bulk: builds and revisions in
    batches; with SQLite, commits not synced; the service itself always syncs)."""
    async with backend.open() as store:
        return await _fill(store, revisions, outputs)


async def _fill(store: Store, revisions: int, outputs: int) -> dict[str, Any]:
    rng = random.Random(1)
    repo = RepositoryRecord("app", REPO_PATH, None)
    for first in range(1, revisions + 1, BATCH):
        batch = range(first, min(first + BATCH, revisions + 1))
        trees = [TreeRecord(_form(i, sub), None, _nar_hash(i, sub), 1000, 10, True)
                 for i in batch for sub in ("", "lib", "docs")]
        revs = [RevisionRecord(f"{i:040x}", 1_600_000_000 + i, _form(i, ""), _form(i, "")) for i in batch]
        # main through every revision, a tag every 10
        moves = [RefChange("refs/heads/main", f"{i:040x}") for i in batch]
        moves += [RefChange(f"refs/tags/v{i}", f"{i:040x}") for i in batch if i % 10 == 0]
        await store.sources.record_revisions(repo, revs, {t.form for t in trees}, trees, moves)

    # derivations: per revision an app (uses the source) and a wrapper; the rest shared dependencies
    drvs = outputs // 2
    deps = drvs - 2 * revisions
    assert deps > 0, "need more outputs than 4 per revision"
    apps = {deps + 2 * i - 1: i for i in range(1, revisions + 1)}
    now = time.time()

    def record(d: int) -> DerivationRecord:
        inputs: tuple[tuple[str, str], ...] = ()
        srcs: tuple[str, ...] = ()
        if d in apps:
            inputs = tuple((drv_path(rng.randrange(1, deps + 1)), "out") for _ in range(3))
            srcs = (fake_path("se", apps[d], "source"),)
        elif d - 1 in apps:
            inputs = ((drv_path(d - 1), "out"),)
        return DerivationRecord(drv_path(d), f"pkg{d}", "x86_64-linux", None, None,
                                "regular:out=00", tuple((o, fake_path("o" + o[0], d, f"pkg{d}-{o}"))
                                                        for o in ("out", "dev")),
                                tuple(dict(inputs).items()), srcs)

    for first in range(1, drvs + 1, BATCH):
        batch = range(first, min(first + BATCH, drvs + 1))
        records = [record(d) for d in batch]
        await store.events.append([NewEvent(r.path, (), float(d), "socket") for d, r in zip(batch, records,
                                                                                            strict=True)])
        ids = {e.drv: e.id for e in await store.events.pending(len(records))}
        await store.builds.record([
            BuildRecord(ids[r.path], r.path, now - drvs + d, r.outputs, (r,),  # type: ignore[arg-type]
                        contents=r.input_srcs, builder=BUILDER)
            for d, r in zip(batch, records, strict=True)])
        # what the content learner would find: each source holds its revision's root
        await store.builds.record_contents([
            ContentRecord(r.input_srcs[0], ContentState.DONE, _nar_hash(apps[d], ""), 1000,
                          _form(apps[d], ""), 10, True)
            for d, r in zip(batch, records, strict=True) if d in apps])
    async with store.reading() as reader:
        counts = await reader.builds.table_counts()
        assert await reader.builds.content_backlog() == 0
    return {"counts": {"revisions": revisions, "directory forms": 3 * revisions,
                       "derivations": counts.derivations, "outputs": counts.outputs, "builds": counts.builds},
            "revisions": revisions, "drvs": drvs}


def percentiles(times: list[float]) -> str:
    times = sorted(times)
    p50 = statistics.median(times) * 1000
    p99 = times[int(len(times) * 0.99) - 1] * 1000
    return f"p50 {p50:6.2f} ms   p99 {p99:6.2f} ms"


def bench_queries(tmp: Path, args: argparse.Namespace) -> None:
    base = tmp / "big"
    (base / "state").mkdir(parents=True)
    backend = Backend(args.backend, base / "state")
    try:
        start = time.perf_counter()
        info = asyncio.run(build_index(backend, args.revisions, args.outputs))
        backend.analyze()
        print(f"{backend.name}: index built in {time.perf_counter() - start:.0f} s: "
              + ", ".join(f"{n:,} {t}" for t, n in info["counts"].items()))
        svc = start_service(base, **backend.settings)
        try:
            _queries(svc, info, args)
        finally:
            svc.stop()
    finally:
        backend.close()


def _queries(svc: Any, info: dict[str, Any], args: argparse.Namespace) -> None:
    rng = random.Random(2)
    tags = [f"v{i}" for i in range(10, args.revisions + 1, 10)]
    times = []
    for _ in range(args.queries):
        tag = rng.choice(tags)
        t = time.perf_counter()
        result = svc.call("lookup", {"repo": "app", "ref": tag})
        times.append(time.perf_counter() - t)
        assert result["builds"] and result["builds"][0]["distance"] == 0, result
        assert result["rev"] == f"{int(tag[1:]):040x}", result
    print(f"{'lookup app <tag> (at the service)':<44} {percentiles(times)}   (goal p99 <= 5 ms)")
    times = []
    for _ in range(args.queries):
        i = rng.randrange(1, args.revisions + 1)
        drv = info["drvs"] - 2 * args.revisions + 2 * i - 1
        t = time.perf_counter()
        result = svc.call("why", {"what": fake_path("oo", drv, f"pkg{drv}-out")})
        times.append(time.perf_counter() - t)
        # the repository is not at hand: the build and its closure, no commit search
        assert result["drvPath"] == drv_path(drv), result
    print(f"{'why <output path> (at the service)':<44} {percentiles(times)}   (goal p99 <= 5 ms)")
    bench_hook_beside_lookups(svc, tags, args.hooks)


_LOOKUP_LOAD = """
import json, socket, sys, time
path, deadline, tags = sys.argv[1], time.time() + float(sys.argv[2]), sys.argv[3:]
i = 0
while time.time() < deadline:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        sock.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "lookup",
                                 "params": {"repo": "app", "ref": tags[i % len(tags)]}}).encode() + b"\\n")
        data = b""
        while not data.endswith(b"\\n"):
            data += sock.recv(1 << 20)
    if i == 0:
        print("running", flush=True)
    i += 1
"""


def _hook_acks(svc: Any, n: int) -> list[float]:
    """Seconds from connect to ack for ``n`` events sent one by one, one connection each, as the
    hook sends them (their drvs are not in the store: each is committed as a failed event, which
    is the same durable commit and ack)."""
    times = []
    for i in range(n):
        line = json.dumps({"v": 1, "drv": fake_path("h", i, "hooked.drv"), "outs": [], "t": time.time()})
        start = time.perf_counter()
        answer = svc.raw(svc.hook_socket, line.encode() + b"\n")
        times.append(time.perf_counter() - start)
        assert answer.startswith(b"error: derivation"), answer
    return times


def bench_hook_beside_lookups(svc: Any, tags: list[str], n: int) -> None:
    """The hook's ack latency alone, then with 16 clients doing lookups as fast as they can, each in
    its own process: readers have their own connections, so the writer does not queue behind them."""
    alone = _hook_acks(svc, n)
    argv = [sys.executable, "-c", _LOOKUP_LOAD, str(svc.query_socket), "600", *tags[:50]]
    load = [subprocess.Popen(argv, stdout=subprocess.PIPE) for _ in range(16)]
    try:
        for proc in load:  # each has answered a lookup: the load is on
            assert proc.stdout is not None and proc.stdout.readline() == b"running\n"
        beside = _hook_acks(svc, n)
    finally:
        for proc in load:
            proc.kill()
            proc.wait()
    p99 = lambda t: sorted(t)[int(len(t) * 0.99) - 1]  # noqa: E731
    print(f"{'hook ack alone':<44} {percentiles(alone)}")
    print(f"{'hook ack beside 16 lookup clients':<44} {percentiles(beside)}   "
          f"p99 ratio {p99(beside) / p99(alone):5.2f}")


def bench_ref_move(tmp: Path, args: argparse.Namespace) -> None:
    files = args.files
    repo = tmp / "repo"
    for i in range(files):
        path = repo / f"d{i % 60}" / f"e{i % 7}" / f"f{i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"file {i}\n" * 20)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "b",
        "GIT_AUTHOR_EMAIL": "b@b",
        "GIT_COMMITTER_NAME": "b",
        "GIT_COMMITTER_EMAIL": "b@b",
    }
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "base"], check=True, env=env)
    base = tmp / "watch"
    base.mkdir()
    backend = Backend(args.backend, base / "state")
    svc = start_service(base, repository=[{"name": "big", "path": str(repo)}], **backend.settings)
    try:

        def main_moves() -> list[str]:
            try:
                return [
                    m["rev"]
                    for m in svc.call("refs", {"repo": "big"})
                    if m["ref"] == "refs/heads/main"
                ]
            except AssertionError:  # not recorded yet
                return []

        while not main_moves():
            time.sleep(0.01)
        times = []
        for n in range(5):
            (repo / "d1" / "e1" / "f1.txt").write_text(f"changed {n}\n")
            subprocess.run(["git", "-C", str(repo), "commit", "-qam", f"c{n}"], check=True, env=env)
            rev = subprocess.run(
                ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, check=True, text=True
            ).stdout.strip()
            start = time.perf_counter()
            while main_moves()[-1:] != [rev]:
                time.sleep(0.002)
            times.append(time.perf_counter() - start)
        print(
            f"{f'ref move -> sources indexed ({files} files)':<44} "
            f"median {statistics.median(times) * 1000:6.0f} ms"
            "   (from the commit; includes the 200 ms debounce)"
        )
    finally:
        svc.stop()
        backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--outputs", type=int, default=1_000_000)
    parser.add_argument("--revisions", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--hooks", type=int, default=300, help="events timed for the hook's ack latency")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="brl", dir="/tmp"))
    try:
        bench_queries(tmp, args)
        bench_ref_move(tmp, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
