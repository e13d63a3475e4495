"""The recording path, measured against references taken in the same run.

Usage: python bench/service.py [--hooks N] [--events N] [--derivations N] [--repeat R]

1. Hook wall time, live service and service down (spool), vs `python3 -I -S -c pass` on the same
   interpreter: the floor for any Python hook. Goals: <= 1.3x and <= 1.5x.
2. Sustained ingest with 16 concurrent hook clients, two ways: (a) hook processes, as Nix runs
   them, against the same 16-way rate of `python3 -I -S -c pass`; (b) the hook protocol from 16
   concurrent connections in one client process: what the service itself can take. Goal >= 1,000/s.
3. Indexing a cold closure of >= 5,000 derivations (empty database) vs `nix show-derivation -r`
   of the same closure. Goal <= 1.5x.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import hook_event, nix_env, run, start_service, timed
from drv_show import expression

ROOT = Path(__file__).resolve().parent.parent
HOOK = str(ROOT / "hook" / "buildref-hook")
PYTHON = "/usr/bin/python3"
CONCURRENCY = 16


def _wall(argv: list[str], env: dict[str, str], n: int) -> float:
    """Median wall time of ``n`` sequential runs."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stderr=subprocess.DEVNULL)  # the spool's one line each
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rate(argv_for: Any, envs: list[dict[str, str]], n: int) -> float:
    """Runs per second of ``n`` processes, ``CONCURRENCY`` at a time."""
    def one(i: int) -> None:
        subprocess.run(argv_for(i), env=envs[i % len(envs)], check=True, capture_output=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, range(n)))
    return n / (time.perf_counter() - start)


async def _protocol_rate(hook_socket: str, drvs: list[str], n: int) -> float:
    """Events/s acknowledged, ``CONCURRENCY`` connections at a time, one event per connection as
    the hook does."""
    counter = iter(range(n))

    async def client() -> None:
        for i in counter:
            await hook_event(hook_socket, drvs[i % len(drvs)], time.time() + i * 1e-6)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return n / (time.perf_counter() - start)


def _ratio(label: str, ours: float, reference: float, reference_name: str, goal: float) -> None:
    print(f"{label:<44} buildref {ours * 1000:8.2f} ms   {reference_name} {reference * 1000:8.2f} ms"
          f"   ratio {ours / reference:5.2f}  (goal <= {goal})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hooks", type=int, default=200, help="sequential hook runs per measurement")
    parser.add_argument("--events", type=int, default=20000, help="events for the protocol ingest rate")
    parser.add_argument("--derivations", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="brb", dir="/tmp"))
    try:
        env = nix_env(tmp)
        nix_file = tmp / "set.nix"
        nix_file.write_text(expression(args.derivations, 1))
        top = run(["nix-instantiate", str(nix_file)], env).decode().strip()
        closure = run(["nix-store", "--query", "--requisites", top], env).decode().split()
        drvs = [p for p in closure if p.endswith(".drv")]

        # 3. cold indexing, first: each repetition starts from an empty database
        nix_time, _ = timed(["nix", "show-derivation", "-r", top], env, repeat=args.repeat)
        cold = []
        for i in range(args.repeat):
            svc = start_service(Path(tempfile.mkdtemp(prefix=f"c{i}", dir=tmp)))
            hook_env = {**svc.hook_env(), "DRV_PATH": top, "OUT_PATHS": ""}
            subprocess.run([HOOK], env=hook_env, check=True)
            svc.wait_idle()
            status = svc.call("status")
            assert status["database"]["derivations"] == len(drvs), status
            cold.append(svc.index_times()[0])
            svc.stop()
        ours = statistics.median(cold)
        _ratio(f"index cold closure ({len(drvs)} drvs)", ours, nix_time, "nix show-derivation -r", 1.5)

        # 1. hook wall time
        svc = start_service(tmp / "live")
        base_env = {"PATH": os.environ["PATH"]}
        floor = _wall([PYTHON, "-I", "-S", "-c", "pass"], base_env, args.hooks)
        live_env = {**base_env, **svc.hook_env(), "DRV_PATH": top, "OUT_PATHS": ""}
        live = _wall([HOOK], live_env, args.hooks)
        down_spool = tmp / "down-spool"
        down_env = {**live_env, "BUILDREF_HOOK_SOCKET": str(tmp / "nobody.sock"),
                    "BUILDREF_SPOOL_DIR": str(down_spool)}
        down = _wall([HOOK], down_env, args.hooks)
        assert len(list(down_spool.iterdir())) == args.hooks
        _ratio("hook, service live", live, floor, "python3 -I -S -c pass", 1.3)
        _ratio("hook, service down (spooled, fsynced)", down, floor, "python3 -I -S -c pass", 1.5)

        # 2. sustained ingest, 16 concurrent
        n = args.hooks * 5
        envs = [{**live_env, "DRV_PATH": d} for d in drvs[:n]]
        floor_rate = _rate(lambda i: [PYTHON, "-I", "-S", "-c", "pass"], envs, n)
        hook_rate = _rate(lambda i: [HOOK], envs, n)
        print(f"{'ingest, 16 concurrent hook processes':<44} {hook_rate:8.0f} events/s   "
              f"python3 -I -S -c pass {floor_rate:8.0f} runs/s   ratio {floor_rate / hook_rate:5.2f}")
        svc.wait_idle()
        start_status = svc.call("status")
        rate = asyncio.run(_protocol_rate(str(svc.hook_socket), drvs, args.events))
        groups = svc.call("status")["sinceStart"]["commitGroups"] - start_status["sinceStart"]["commitGroups"]
        print(f"{'ingest, 16 concurrent hook-protocol clients':<44} {rate:8.0f} events/s acked "
              f"({args.events} events in {groups} commits)  (goal >= 1000)")
        start = time.perf_counter()
        svc.wait_idle()
        backlog = time.perf_counter() - start
        print(f"{'  then indexing the backlog':<44} {backlog:8.2f} s   acked and indexed: "
              f"{args.events / (args.events / rate + backlog):.0f} events/s")
        svc.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
