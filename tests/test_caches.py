"""Binary caches in the running service (issue 14): every indexed build uploaded by ``nix copy`` to
``[upload] to`` from a durable queue; builds answered with the configured caches that verifiably
hold them (``caches``), or that cannot say now (``cachesUnknown``); ``lookup --cached``; deploying
a ref from the cache. Real parts throughout: keys from ``nix-store --generate-binary-cache-key``, a
file:// cache written by ``nix copy`` and served over HTTP on 127.0.0.1, builds by real Nix through
the hook."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from buildref.nix.hashes import Hash, HashAlgo
from buildref.nix.narinfo import NarInfoFile, SecretKey
from buildref.nix.storepath import StorePath
from buildsets import flake_repo, salt
from cacheserver import CacheServer, Root, served
from helpers import Nix, git, nix_string
from servicectl import ServiceProcess, nix_build_json, run_hook, wait_for


@dataclass(frozen=True)
class Keys:
    secret: Path
    public: str
    other_public: str  # a key that signed nothing


@pytest.fixture(scope="module")
def keys(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> Keys:
    directory = tmp_path_factory.mktemp("keys")
    found = {}
    for name in ("cache-1", "other-1"):
        sk, pk = directory / f"{name}.sk", directory / f"{name}.pk"
        nix.run("nix-store", "--generate-binary-cache-key", name, str(sk), str(pk))
        found[name] = (sk, pk.read_text().strip())
    return Keys(found["cache-1"][0], found["cache-1"][1], found["other-1"][1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cli(service: ServiceProcess, *args: str, env: dict[str, str] | None = None) -> Any:
    argv = [sys.executable, "-m", "buildref", *args, "--json", "--socket", str(service.query_socket)]
    proc = subprocess.run(argv, capture_output=True, check=False, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def narinfo(cache: Path, path: str) -> Path:
    return cache / f"{StorePath.parse(path).hash_part}.narinfo"


def fixed_output(nix: Nix, directory: Path, system: str) -> Path:
    """A fixed-output derivation (recursive sha256) whose output is one file; its hash computed by
    Nix from the same bytes."""
    content = directory / "fixed-content"
    content.write_text(f"fixed {salt()}\n")
    nar_hash = nix.run("nix", "hash", "path", str(content)).decode().strip()
    expr = directory / "fixed.nix"
    text = content.read_text().strip()
    expr.write_text(f"""derivation {{
  name = "fixed"; system = {nix_string(system)}; builder = "/bin/sh";
  args = [ "-c" "echo {text} > $out" ];
  outputHashMode = "recursive"; outputHashAlgo = "sha256"; outputHash = {nix_string(nar_hash)};
}}""")
    return expr


def plain(directory: Path, system: str, name: str) -> Path:
    expr = directory / f"{name}.nix"
    expr.write_text(f"""derivation {{ name = {nix_string(name)}; system = {nix_string(system)};
  builder = "/bin/sh"; args = [ "-c" "echo {name} {salt()} > $out" ]; }}""")
    return expr


@dataclass(frozen=True)
class World:
    service: ServiceProcess
    server: CacheServer
    cache: Path  # the file:// cache uploads go to, served as urls["a"]
    urls: dict[str, str]
    http: str  # the service's HTTP API


@pytest.fixture
def world(system: str, keys: Keys, tmp_path: Path) -> Iterator[World]:
    """A service with a flake repository ``app``, uploading to a file:// cache that an HTTP server
    serves as ``a``, and configured with five caches: ``a`` (its key), ``a`` again with a key that
    signed nothing, ``liar`` (narinfos at the wrong hash parts), ``broken`` (500 for narinfos) and a
    dead port."""
    cache = tmp_path / "cache"
    liar = tmp_path / "liar"
    liar.mkdir()
    roots = {"a": Root(cache), "liar": Root(liar), "broken": Root(cache, mode="fail-narinfo")}
    repo = flake_repo(tmp_path, system)
    http = f"127.0.0.1:{free_port()}"
    with served(roots) as server:
        urls = {"a": server.url("a"), "a-other-key": server.url("a") + "/", "liar": server.url("liar"),
                "broken": server.url("broken"), "dead": f"http://127.0.0.1:{free_port()}"}
        keyed = {"a-other-key": keys.other_public}
        svc = ServiceProcess(
            repository=[{"name": "app", "path": str(repo)}],
            http={"listen": http},
            upload={"to": f"file://{cache}?secret-key={keys.secret}", "max_backoff": 2},
            cache=[{"url": url, "public_keys": [keyed.get(name, keys.public)]} for name, url in urls.items()])
        try:
            yield World(svc.start(), server, cache, urls, f"http://{http}")
        finally:
            svc.close()


def uploaded(service: ServiceProcess, done: int) -> dict[str, Any]:
    wait_for(lambda: service.call("status")["upload"]["done"] >= done, what=f"{done} paths uploaded")
    status: dict[str, Any] = service.call("status")
    return status


def resign(cache: Path, path: str, secret_file: Path) -> None:
    """The narinfo of ``path`` says another NAR hash, and is signed anew with the cache's key."""
    info = NarInfoFile.parse(narinfo(cache, path).read_bytes())
    changed = replace(info, nar_hash=Hash.of(HashAlgo.SHA256, b"another build"), sigs=())
    secret = SecretKey.parse(secret_file.read_text())
    signed = replace(changed, sigs=(secret.sign(changed.fingerprint.encode()),))
    narinfo(cache, path).write_text(signed.render())


def test_builds_are_uploaded_and_answered_with_the_caches_that_verifiably_hold_them(
        nix: Nix, system: str, keys: Keys, tmp_path: Path, world: World) -> None:
    service, cache, urls = world.service, world.cache, world.urls
    env = service.nix_env(nix.env)
    [flake] = nix_build_json(env, f"git+file://{tmp_path / 'flake'}")
    [fixed] = nix_build_json(env, "-f", str(fixed_output(nix, tmp_path, system)))
    [other] = nix_build_json(env, "-f", str(plain(tmp_path, system, "other")))
    service.wait_idle()  # indexed, and the fixed output's NAR hash learnt from the store
    out, fixed_out, other_out = (b["outputs"]["out"] for b in (flake, fixed, other))
    status = uploaded(service, 3)
    assert status["upload"]["failed"] == 0
    assert status["upload"]["to"] == f"file://{cache}?secret-key={keys.secret}"
    for path in (out, fixed_out, other_out):
        assert narinfo(cache, path).is_file()  # written by nix copy, signed with the key

    # the ways a cache can seem to hold a path and not: each is absent, never present
    liar = world.server.roots["liar"].directory
    shutil.copy(cache / "nix-cache-info", liar / "nix-cache-info")
    shutil.copy(narinfo(cache, other_out), narinfo(liar, out))  # signed, but names another path
    resign(cache, fixed_out, keys.secret)  # signed, but another NAR hash than the index knows
    narinfo(cache, other_out).unlink()  # no narinfo at all

    unknown = [urls["broken"], urls["dead"]]  # a 500 and a dead port: unknown, never absent
    [build] = cli(service, "lookup", "app", "main")["builds"]
    assert build["outputs"]["out"] == out
    assert build["caches"] == [urls["a"]]  # not a-other-key (untrusted), not liar (another path)
    assert build["cachesUnknown"] == unknown
    by_drv = {b["drvPath"]: b for b in cli(service, "builds")}
    assert by_drv[fixed["drvPath"]]["caches"] == []
    assert by_drv[other["drvPath"]]["caches"] == []
    assert by_drv[flake["drvPath"]]["caches"] == [urls["a"]]
    why = cli(service, "why", out)
    assert why["caches"] == [urls["a"]] and why["cachesUnknown"] == unknown

    # --cached: the flake's build is gone from this store, but a cache holds it
    nix.run("nix-store", "--delete", out)
    [kept] = cli(service, "lookup", "app", "main", "--cached")["builds"]
    assert kept["outputs"]["out"] == out and not kept["valid"]

    # metrics: uploads and probes by result, the queue by state
    text = urllib.request.urlopen(f"{world.http}/metrics", timeout=10).read().decode()
    assert 'buildref_uploads_total{result="done"} 3.0' in text
    assert 'buildref_upload_queue{state="done"} 3.0' in text
    for reason in ("verified", "untrusted", "other-store-path", "no-narinfo", "fetch-failed"):
        assert f'buildref_cache_probes_total{{result="{reason}"}}' in text, reason


def test_uploads_retry_an_unreachable_target_and_a_poisoned_path_never_blocks_the_rest(
        nix: Nix, system: str, keys: Keys, tmp_path: Path) -> None:
    """The target is first unusable (a file where the cache directory should be): every copy fails
    and is tried again, later and later. Then it is a cache, but one path cannot be written there
    (its narinfo's place is a directory): the others are copied all the same, and that one once it
    can be. Meanwhile the hook's acks do not wait on any of it."""
    cache = tmp_path / "cache"
    cache.write_text("not a directory yet\n")
    svc = ServiceProcess(upload={"to": f"file://{cache}?secret-key={keys.secret}", "max_backoff": 2}).start()
    try:
        env = svc.nix_env(nix.env)
        built = [nix_build_json(env, "-f", str(plain(tmp_path, system, f"up{i}")))[0] for i in range(3)]
        outs = [b["outputs"]["out"] for b in built]
        wait_for(lambda: svc.call("status")["upload"]["failed"] == 3, what="every copy failed, alone")
        assert svc.call("status")["upload"]["done"] == 0
        acks = []
        for drv in (b["drvPath"] for b in built):  # the hook, as Nix runs it, while uploads fail
            start = time.monotonic()
            assert run_hook(svc.hook_env(), drv).returncode == 0
            acks.append(time.monotonic() - start)
        assert max(acks) < 0.5, acks

        cache.unlink()
        cache.mkdir()
        poisoned = narinfo(cache, outs[0])
        poisoned.mkdir()  # nix copy cannot write this one path
        wait_for(lambda: svc.call("status")["upload"]["done"] == 2, timeout=60,
                 what="the two other paths copied")
        assert narinfo(cache, outs[1]).is_file() and narinfo(cache, outs[2]).is_file()
        status = svc.call("status")["upload"]
        assert status["failed"] == 1 and status["pending"] == 0
        poisoned.rmdir()
        wait_for(lambda: svc.call("status")["upload"]["done"] == 3, timeout=60, what="the last path copied")
        assert poisoned.is_file()
        log = svc.log_lines()
        assert any(line["event"] == "upload failed" for line in log)

        # a path gone from the store before it could be copied is dropped, with a log line
        [gone] = nix_build_json(env, "-f", str(plain(tmp_path, system, "gone")))
        poisoned_gone = narinfo(cache, gone["outputs"]["out"])
        poisoned_gone.mkdir()  # it fails once, then is deleted from the store
        wait_for(lambda: svc.call("status")["upload"]["failed"] == 1, timeout=60, what="the copy failed")
        nix.run("nix-store", "--delete", gone["outputs"]["out"])
        wait_for(lambda: svc.call("status")["upload"]["dropped"] == 1, timeout=60, what="the path dropped")
        assert any(line["event"] == "not uploaded: gone from the store" for line in svc.log_lines())
    finally:
        svc.close()


def test_the_queue_survives_a_restart(nix: Nix, system: str, keys: Keys, tmp_path: Path) -> None:
    """Queued paths are in the index, not in memory: a service killed before it could copy them
    copies them after it starts again."""
    cache = tmp_path / "cache"
    cache.write_text("not yet\n")
    svc = ServiceProcess(upload={"to": f"file://{cache}?secret-key={keys.secret}", "max_backoff": 2}).start()
    try:
        [built] = nix_build_json(svc.nix_env(nix.env), "-f", str(plain(tmp_path, system, "durable")))
        wait_for(lambda: svc.call("status")["upload"]["failed"] == 1, what="the copy failed")
        svc.kill()
        cache.unlink()
        cache.mkdir()
        svc.start()
        wait_for(lambda: svc.call("status")["upload"]["done"] == 1, timeout=60,
                 what="copied after the restart")
        assert narinfo(cache, built["outputs"]["out"]).is_file()
    finally:
        svc.close()


def test_deploy_fetches_the_cached_build_and_builds_only_when_there_is_none(
        nix: Nix, system: str, keys: Keys, tmp_path: Path, world: World) -> None:
    """``examples/deploy.sh`` on a "deploy host" that asks the index over HTTP: the build of v1 was
    deleted from the store, and is fetched from the cache (building is switched off: it cannot
    have been built); v2 was never built, and is built."""
    service = world.service
    repo = tmp_path / "flake"
    env = service.nix_env(nix.env)
    git(repo, "tag", "v1")
    [built] = nix_build_json(env, f"git+file://{repo}?ref=v1")
    uploaded(service, 1)
    cli(service, "record", "app")
    out = built["outputs"]["out"]
    nix.run("nix-store", "--delete", out)
    assert not os.path.exists(out)

    script = Path(__file__).resolve().parent.parent / "examples" / "deploy.sh"
    deploy_env = {**nix.env, "BUILDREF_URL": world.http,
                  "PATH": f"{Path(sys.executable).parent}:{nix.env['PATH']}",
                  "NIX_CONFIG": nix.env.get("NIX_CONFIG", "") + f"\ntrusted-public-keys = {keys.public}\n"}
    attr = f"packages.{system}.default"
    target = tmp_path / "current"
    no_builds = {**deploy_env, "NIX_CONFIG": deploy_env["NIX_CONFIG"] + "max-jobs = 0\n"}
    fetched = subprocess.run([str(script), "app", "v1", f"git+file://{repo}", attr, str(target)],
                             env=no_builds, capture_output=True, check=False)
    assert fetched.returncode == 0, fetched.stderr.decode()
    assert "fetching v1" in fetched.stderr.decode() and world.urls["a"] in fetched.stderr.decode()
    assert fetched.stdout.decode().strip() == out == os.readlink(target)
    assert os.path.exists(out)

    (repo / "data").write_text(f"second {salt()}\n")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "two")
    git(repo, "tag", "v2")
    cli(service, "record", "app")
    fresh = subprocess.run([str(script), "app", "v2", f"git+file://{repo}", attr, str(target)],
                           env=deploy_env, capture_output=True, check=False)
    assert fresh.returncode == 0, fresh.stderr.decode()
    assert "no cached build of v2" in fresh.stderr.decode()
    assert os.readlink(target) == fresh.stdout.decode().strip() != out
