"""Presence of 1,000 store paths against a local HTTP binary cache: wall time and requests with a cold
memo (a new client) and a warm one (the same client asked again), with Nix's own narinfo queries
(`nix path-info --store http://…`, fresh narinfo disk cache) as a reference.

The cache holds signed narinfos written by buildref's own signer (proved against `nix store verify`
in tests/test_cache_presence.py) for paths that do not exist anywhere: only narinfos are read, so no
NAR is needed. The server is aiohttp in its own process and counts the requests it answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "service"))

from buildref.cache import CacheClient, CacheConfig, Presence, ProbeSettings
from buildref.nix.hashes import Hash, HashAlgo
from buildref.nix.narinfo import NarInfoFile, SecretKey
from buildref.nix.storepath import make_store_path
from common import nix_env, run


def serve(directory: Path) -> None:
    """The cache server (run as a child process): files under /, request count at /_count."""
    from aiohttp import web

    count = 0

    async def handle(request: web.Request) -> web.StreamResponse:
        nonlocal count
        name = request.match_info["name"]
        if name == "_count":
            return web.Response(text=str(count))
        count += 1
        path = directory / name
        if not path.is_file():
            return web.Response(status=404)
        return web.Response(body=path.read_bytes())

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/{name}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def make_cache(directory: Path, secret: SecretKey, count: int, absent: int) -> list[str]:
    """``count`` paths, the first ``count - absent`` with a signed narinfo in ``directory``."""
    directory.mkdir()
    (directory / "nix-cache-info").write_text("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n")
    paths = []
    for i in range(count):
        content = Hash.of(HashAlgo.SHA256, f"bench {i}".encode())
        path = make_store_path("output:out", content, f"bench-{i}")
        paths.append(path)
        if i >= count - absent:
            continue
        nar_hash = Hash.of(HashAlgo.SHA256, f"nar {i}".encode())
        info = NarInfoFile(
            store_path=path, url=f"nar/{nar_hash.nix32}.nar.xz", compression="xz",
            file_hash=nar_hash, file_size=100 + i, nar_hash=nar_hash, nar_size=200 + i,
            references=(paths[i - 1],) if i else (), deriver=None, system=None, sigs=(), ca=None)
        signed = replace(info, sigs=(secret.sign(info.fingerprint.encode()),))
        (directory / f"{path.split('/')[-1][:32]}.narinfo").write_text(signed.render())
    return paths


def expected_hashes(directory: Path, paths: list[str]) -> list[tuple[str, Hash | None]]:
    asked: list[tuple[str, Hash | None]] = []
    for path in paths:
        f = directory / f"{path.split('/')[-1][:32]}.narinfo"
        asked.append((path, NarInfoFile.parse(f.read_bytes()).nar_hash if f.exists() else None))
    return asked


async def measure(url: str, public_key: str, asked: list[tuple[str, Hash | None]],
                  settings: ProbeSettings, count_url: str) -> tuple[float, int, float, int]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async def requests() -> int:
            async with session.get(count_url) as response:
                return int(await response.text())

        before = await requests()
        async with CacheClient([CacheConfig(url, (public_key,))], settings=settings) as client:
            start = time.perf_counter()
            (cold,) = await client.presence(asked)
            cold_time = time.perf_counter() - start
            after_cold = await requests()
            start = time.perf_counter()
            (warm,) = await client.presence(asked)
            warm_time = time.perf_counter() - start
            after_warm = await requests()
    assert cold == warm
    states = [p.state for p in cold.paths]
    present = sum(s is Presence.PRESENT for s in states)
    absent = sum(s is Presence.ABSENT for s in states)
    if present + absent != len(asked):
        sys.exit(f"unexpected answers: {[p for p in cold.paths if p.state is Presence.UNAVAILABLE][:3]}")
    return cold_time, after_cold - before, warm_time, after_warm - after_cold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--paths", type=int, default=1000)
    parser.add_argument("--absent", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return

    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        base = Path(tmp)
        env = nix_env(base / "home")
        run(["nix-store", "--generate-binary-cache-key", "bench-1", str(base / "sk"), str(base / "pk")], env)
        secret = SecretKey.parse((base / "sk").read_text())
        public_key = (base / "pk").read_text().strip()
        cache = base / "cache"
        paths = make_cache(cache, secret, args.paths, args.absent)
        asked = expected_hashes(cache, paths)

        server = subprocess.Popen([sys.executable, __file__, "--serve", str(cache)],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            url = f"http://127.0.0.1:{server.stdout.readline().strip()}"
            print(f"{args.paths} paths ({args.paths - args.absent} present, {args.absent} absent), "
                  f"local HTTP cache, median of {args.repeat}")
            for per_cache, overall in ((8, 32), (32, 32)):
                settings = ProbeSettings(per_cache=per_cache, overall=overall)
                runs = [asyncio.run(measure(url, public_key, asked, settings, f"{url}/_count"))
                        for _ in range(args.repeat)]
                cold = statistics.median(r[0] for r in runs)
                warm = statistics.median(r[2] for r in runs)
                print(f"buildref per_cache={per_cache:<2} overall={overall:<2}  "
                      f"cold {cold * 1000:7.1f} ms ({runs[0][1]} requests)   "
                      f"warm {warm * 1000:6.2f} ms ({runs[0][3]} requests)")

            present = [p for p, h in asked if h is not None]
            times = []
            for i in range(args.repeat):
                # A fresh narinfo disk cache each time, so Nix really asks.
                home = base / f"nixhome{i}"
                nix = {**env, "HOME": str(home), "XDG_CACHE_HOME": str(home / "cache")}
                start = time.perf_counter()
                out = run(["nix", "path-info", "--json", "--store", url, *present], nix)
                times.append(time.perf_counter() - start)
                assert len(json.loads(out)) == len(present)
            print(f"nix path-info --store (present only, {len(present)} paths)  "
                  f"{statistics.median(times) * 1000:7.1f} ms")
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
