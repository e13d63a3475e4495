"""Lookup and why latency at the service on a large index, and ref-move -> source-indexed latency.

Usage: python bench/lookup.py [--outputs N] [--revisions N] [--queries N] [--files N]

1. A synthetic index in the real schema (the service's own `Database.open` creates it): N
   revisions of one repository (each with its root and two directories, under both rules), one
   application derivation per revision that uses the revision's source, a wrapper above each
   (distance 1), shared dependencies below, two outputs per derivation and a build of each, and
   the history of `main` through every revision plus a tag every 10 revisions. Then `lookup`
   (random tag) and `why` (random output) through the query socket, one connection per request
   as the CLI does: p50 and p99. Goal: p99 <= 5 ms.
2. A real repository of N files: the time from a commit (ref move) until `refs` shows it and its
   sources are in the index (the watcher's path). Reported, no reference.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from buildref.db import Database
from common import Service


def fake_path(kind: str, i: int, name: str) -> str:
    digest = f"{kind}{i:031d}"[-32:].replace("e", "a").replace("o", "b").replace("u", "c").replace("t", "d")
    return f"/nix/store/{digest}-{name}"


def build_index(db_path: str, revisions: int, outputs: int) -> dict[str, Any]:
    asyncio.run(_create(db_path))
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA synchronous = OFF")
    rng = random.Random(1)
    now = time.time()
    conn.execute("INSERT INTO repositories (id, name, path) VALUES (1, 'app', '/srv/app')")
    conn.executemany(
        "INSERT INTO revisions (id, repo_id, rev, commit_time) VALUES (?, 1, ?, ?)",
        ((i, f"{i:040x}", 1_600_000_000 + i) for i in range(1, revisions + 1)),
    )
    conn.executemany(
        "INSERT INTO sources (rev_id, subdir, rule, nar_hash, store_path) VALUES (?, ?, ?, ?, ?)",
        (
            (
                i,
                sub,
                rule,
                f"sha256-{i:043d}{sub}{rule}"[:51] + "=",
                fake_path("s" + sub[:1] + rule[:1], i, sub or "source"),
            )
            for i in range(1, revisions + 1)
            for sub in ("", "lib", "docs")
            for rule in ("export-ignore", "raw")
        ),
    )
    conn.executemany(
        "INSERT INTO ref_moves (repo_id, ref, rev_id, seen_at) VALUES (1, ?, ?, ?)",
        (("refs/heads/main", i, now - revisions + i) for i in range(1, revisions + 1)),
    )
    conn.executemany(
        "INSERT INTO ref_moves (repo_id, ref, rev_id, seen_at) VALUES (1, ?, ?, ?)",
        ((f"refs/tags/v{i}", i, now - revisions + i) for i in range(10, revisions + 1, 10)),
    )
    # derivations: per revision an app (uses the source) and a wrapper; the rest shared dependencies
    drvs = outputs // 2
    deps = drvs - 2 * revisions
    assert deps > 0, "need more outputs than 4 per revision"

    def drv_rows() -> Any:
        for d in range(1, drvs + 1):
            yield d, fake_path("d", d, f"pkg{d}.drv"), f"pkg{d}", "x86_64-linux", "regular:out=00"

    conn.executemany(
        "INSERT INTO derivations (id, path, name, system, modulo, first_seen) VALUES (?, ?, ?, ?, ?, 0)",
        drv_rows(),
    )
    conn.executemany(
        "INSERT INTO outputs (drv_id, name, path) VALUES (?, ?, ?)",
        ((d, o, fake_path("o" + o[0], d, f"pkg{d}-{o}")) for d in range(1, drvs + 1) for o in ("out", "dev")),
    )
    conn.executemany(
        "INSERT INTO events (id, drv, outs, t, received_at, source, state)"
        " VALUES (?, ?, '', ?, ?, 'socket', 'indexed')",
        ((d, fake_path("d", d, f"pkg{d}.drv"), float(d), float(d)) for d in range(1, drvs + 1)),
    )
    conn.executemany(
        "INSERT INTO builds (event_id, drv_id, built_at) VALUES (?, ?, ?)",
        ((d, d, now - drvs + d) for d in range(1, drvs + 1)),
    )
    conn.executemany(
        "INSERT INTO build_outputs (event_id, name, path) VALUES (?, ?, ?)",
        ((d, o, fake_path("o" + o[0], d, f"pkg{d}-{o}")) for d in range(1, drvs + 1) for o in ("out", "dev")),
    )
    app = lambda i: deps + 2 * i - 1  # noqa: E731
    conn.executemany(
        "INSERT INTO src_inputs (drv_id, path) VALUES (?, ?)",
        ((app(i), fake_path("s" + "e", i, "source")) for i in range(1, revisions + 1)),
    )
    conn.executemany(
        "INSERT OR IGNORE INTO drv_inputs (drv_id, input_id, outputs) VALUES (?, ?, 'out')",
        ((app(i), rng.randrange(1, deps + 1)) for i in range(1, revisions + 1) for _ in range(3)),
    )
    conn.executemany(
        "INSERT INTO drv_inputs (drv_id, input_id, outputs) VALUES (?, ?, 'out')",
        ((app(i) + 1, app(i)) for i in range(1, revisions + 1)),
    )
    conn.commit()
    counts = {
        t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        for t in ("revisions", "sources", "derivations", "outputs", "build_outputs", "ref_moves")
    }
    conn.execute("ANALYZE")
    conn.close()
    return {"counts": counts, "revisions": revisions, "drvs": drvs}


async def _create(path: str) -> None:
    db = await Database.open(path)
    await db.close()


def percentiles(times: list[float]) -> str:
    times = sorted(times)
    p50 = statistics.median(times) * 1000
    p99 = times[int(len(times) * 0.99) - 1] * 1000
    return f"p50 {p50:6.2f} ms   p99 {p99:6.2f} ms"


def bench_queries(tmp: Path, args: argparse.Namespace) -> None:
    base = tmp / "big"
    (base / "state").mkdir(parents=True)
    start = time.perf_counter()
    info = build_index(str(base / "state" / "buildref.db"), args.revisions, args.outputs)
    print(
        f"index built in {time.perf_counter() - start:.0f} s: "
        + ", ".join(f"{n:,} {t}" for t, n in info["counts"].items())
    )
    svc = Service(base)
    try:
        rng = random.Random(2)
        tags = [f"v{i}" for i in range(10, args.revisions + 1, 10)]
        times = []
        for _ in range(args.queries):
            tag = rng.choice(tags)
            t = time.perf_counter()
            result = svc.call("lookup", {"repository": "app", "ref": tag})
            times.append(time.perf_counter() - t)
            assert result["builds"] and result["builds"][0]["distance"] == 0, result
        print(f"{'lookup app <tag> (at the service)':<44} {percentiles(times)}   (goal p99 <= 5 ms)")
        times = []
        for _ in range(args.queries):
            i = rng.randrange(1, args.revisions + 1)
            drv = info["drvs"] - 2 * args.revisions + 2 * i - 1
            t = time.perf_counter()
            result = svc.call("why", {"what": fake_path("oo", drv, f"pkg{drv}-out")})
            times.append(time.perf_counter() - t)
            assert result["sources"] and result["sources"][0]["rev"] == f"{i:040x}", result
        print(f"{'why <output path> (at the service)':<44} {percentiles(times)}   (goal p99 <= 5 ms)")
    finally:
        svc.stop()


def bench_ref_move(tmp: Path, files: int) -> None:
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
    svc = Service(base, f'[[repository]]\nname = "big"\npath = "{repo}"\n')
    try:

        def main_moves() -> list[str]:
            try:
                return [
                    m["rev"]
                    for m in svc.call("refs", {"repository": "big"})
                    if m["ref"] == "refs/heads/main"
                ]
            except SystemExit:
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--outputs", type=int, default=1_000_000)
    parser.add_argument("--revisions", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--files", type=int, default=3000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="brl", dir="/tmp"))
    try:
        bench_queries(tmp, args)
        bench_ref_move(tmp, args.files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
