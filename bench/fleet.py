"""A fleet writing one PostgreSQL: N real services (each its own builder name, state directory and
local inbox) shipping builds to one server on this machine (Unix socket), durable (fsync on).

Usage: python bench/fleet.py [--services N] [--events E] [--derivations D] [--clients C]

Each service is sent E hook events (the hook protocol, one connection per event as the hook
makes it, C connections at a time in all) for D real derivations instantiated here and shared by
every builder, as a fleet builds the same closures; the builds themselves are not run (the
indexer reads and verifies the .drv files either way).

1. live: events sent to every service at once. Events/s acknowledged (each after its local
   durable commit), and events/s in the shared index (from the first send until every build is
   there). Goal: >= 5,000 events/s in the shared index.
2. catch-up: PostgreSQL stopped, E more events sent to each service (acknowledged all the same),
   PostgreSQL started: events/s shipped from then until every build is in the shared index.
3. The PostgreSQL side alone: N processes each recording batches of builds (known derivations,
   64 per transaction, as an indexer sends them) straight through the storage interfaces.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from buildref.store.postgres import PgIndex
from common import hook_event, nix_env, run
from pgserver import PostgresServer
from servicectl import ServiceProcess

PROGRESS_EVERY = 0.25  # seconds between counts of the shared index


def instantiate(tmp: Path, n: int) -> list[str]:
    expr = tmp / "fleet.nix"
    expr.write_text(f"""builtins.genList (i: derivation {{
  name = "fleet-${{toString i}}"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo ${{toString i}} > $out" ]; salt = "{time.time()}";
}}) {n}""")
    drvs = run(["nix-instantiate", str(expr)], nix_env(tmp / "home")).decode().split()
    assert len(drvs) == n
    return drvs


async def send(services: list[ServiceProcess], drvs: list[str], per_service: int, clients: int,
               offset: float) -> float:
    """Every service's events, ``clients`` connections at a time; seconds until all were acked."""
    work = iter([(svc, i) for i in range(per_service) for svc in services])

    async def client() -> None:
        for svc, i in work:
            await hook_event(str(svc.hook_socket), drvs[i % len(drvs)], offset + i * 1e-3)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - start


async def builds_in_index(url: str) -> int:
    """Builds the shared index holds, asked through the storage interface."""
    index = PgIndex(url, "bench")
    try:
        async with index.reading() as reader:
            return (await reader.builds.table_counts()).builds
    finally:
        await index.close()


async def wait_for_index(url: str, total: int, timeout: float = 1800) -> tuple[float, float, int]:
    """Seconds until the shared index holds ``total`` builds, the seconds from the first count
    that grew, and the count before it."""
    start = time.perf_counter()
    before = await builds_in_index(url)
    first: float | None = None
    while (count := await builds_in_index(url)) < total:
        now = time.perf_counter()
        if first is None and count > before:
            first, before = now, count
        if now - start > timeout:
            raise SystemExit(f"only {count} of {total} builds in the shared index after {timeout} s")
        await asyncio.sleep(PROGRESS_EVERY)
    end = time.perf_counter()
    return end - start, end - (first or start), before


def cpu_seconds(pids: list[int], waited: bool = False) -> float:
    """User and system CPU time the processes have used so far (``waited``: with that of their
    children that have exited); a process gone meanwhile counts nothing."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        ticks += sum(int(x) for x in fields[11:15 if waited else 13])  # utime stime [cutime cstime]
    return ticks / os.sysconf("SC_CLK_TCK")


def server_cpu(server: PostgresServer) -> float:
    """The server's CPU time: the postmaster with its exited backends, and the running ones."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    return cpu_seconds([postmaster], waited=True) + cpu_seconds([int(c) for c in children])


def check_caught_up(services: list[ServiceProcess], expected: int) -> None:
    for svc in services:
        status = svc.call("status")
        lag, events = status["indexLag"], status["events"]
        assert lag["events"] == 0 and lag["reachable"], (svc.base, lag)
        assert events["indexed"] == expected and events["failed"] == 0, (svc.base, events)


def _record_batches(url: str, builder: str, drvs: list[str], batches: int, start: Any) -> None:
    """One writer process: ``batches`` transactions of 64 builds of known derivations."""
    from buildref.store.api import BuildRecord
    from buildref.store.postgres import PgIndex

    async def go() -> None:
        index = PgIndex(url, builder)
        try:
            start.wait()
            for b in range(batches):
                await index.builds.record([BuildRecord(0, drvs[(b * 64 + k) % len(drvs)], b * 64 + k + 0.5,
                                                       (), builder=builder) for k in range(64)])
        finally:
            await index.close()

    asyncio.run(go())


def direct_writes(url: str, drvs: list[str], writers: int, batches: int) -> float:
    start = multiprocessing.Event()
    procs = [multiprocessing.Process(target=_record_batches, args=(url, f"direct-{w}", drvs, batches, start))
             for w in range(writers)]
    for p in procs:
        p.start()
    time.sleep(2)  # every process imported and connected
    t = time.perf_counter()
    start.set()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    return writers * batches * 64 / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--events", type=int, default=1000, help="events per service, per phase")
    parser.add_argument("--derivations", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32, help="concurrent hook connections in all")
    parser.add_argument("--log-level", default="info", help="the services' log level (info: a line a build)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="brf", dir="/tmp"))
    server = PostgresServer(durable=True).start()
    services: list[ServiceProcess] = []
    try:
        drvs = instantiate(tmp, args.derivations)
        url = server.create_database("fleet")
        services = [ServiceProcess(tmp / f"s{i}", database=url, builder=f"builder-{i}",
                                   log={"format": "json", "level": args.log_level})
                    for i in range(args.services)]
        for svc in services:
            svc.start(wait=False)
        for svc in services:
            svc.wait_ready(timeout=120)
        n, total = args.services, args.services * args.events
        version = server.psql("SHOW server_version").strip()
        print(f"{n} services (log level {args.log_level}), one PostgreSQL {version} (fsync on, Unix socket), "
              f"{args.derivations} derivations, {args.events} events per service per phase")

        # 1. live
        async def live() -> tuple[float, float]:
            shipped = asyncio.create_task(wait_for_index(url, total))
            acked = await send(services, drvs, args.events, args.clients, 1_000_000.0)
            return acked, (await shipped)[0]
        pids = [svc.proc.pid for svc in services if svc.proc is not None]
        cpu = cpu_seconds(pids), server_cpu(server), os.times()
        acked, shipped = asyncio.run(live())
        used = (cpu_seconds(pids) - cpu[0], server_cpu(server) - cpu[1],
                sum(os.times()[:2]) - sum(cpu[2][:2]))
        check_caught_up(services, args.events)
        print(f"{'live: acknowledged (local durable commits)':<52} {total / acked:8.0f} events/s")
        print(f"{'live: in the shared index':<52} {total / shipped:8.0f} events/s   (goal >= 5,000)")
        print(f"{'live: CPU per event':<52} services {used[0] / total * 1e3:.2f} ms, PostgreSQL "
              f"{used[1] / total * 1e3:.2f} ms, the sending client {used[2] / total * 1e3:.2f} ms"
              f" ({os.cpu_count()} cores)")

        # 2. catch-up after an outage
        server.stop()
        acked = asyncio.run(send(services, drvs, args.events, args.clients, 2_000_000.0))
        spooled = sum(len(list(s.spool.iterdir())) for s in services if s.spool.exists())
        print(f"{'outage: acknowledged with PostgreSQL stopped':<52} {total / acked:8.0f} events/s, "
              f"{spooled} spooled")
        server.start()
        shipped, flowing, first = asyncio.run(wait_for_index(url, 2 * total))
        check_caught_up(services, 2 * args.events)
        print(f"{'catch-up: shipped once PostgreSQL is back':<52} {total / shipped:8.0f} events/s"
              f"   (in {shipped:.1f} s, of which the indexers' retry backoff <= 5 s)")
        print(f"{'catch-up: from the first shipped':<52} {(2 * total - first) / flowing:8.0f} events/s")
        for svc in services:
            svc.stop()
        services = []

        # 3. the shared index alone
        rate = direct_writes(url, drvs[:args.events], args.services, 50)
        print(f"{f'{args.services} processes recording batches of 64 builds':<52} {rate:8.0f} builds/s")
    finally:
        for svc in services:
            svc.close()
        server.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
