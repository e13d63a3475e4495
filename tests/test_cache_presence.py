"""Binary cache presence against real caches: keys from nix-store, paths built by real Nix and copied
with `nix copy --to file://…?secret-key=…`, served as is (file://) and by a real HTTP server on
127.0.0.1; signatures and fingerprints checked both ways against Nix itself."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from buildref.cache import (
    CacheClient,
    CacheConfig,
    CachePresence,
    Presence,
    ProbeSettings,
    Reason,
)
from buildref.cache.memo import TtlLru
from buildref.cache.transport import cache_base
from buildref.errors import BadConfig, BadNarInfo, BadSigningKey
from buildref.nix.hashes import Hash, HashAlgo
from buildref.nix.narinfo import (
    CacheInfo,
    NarInfoFile,
    PublicKey,
    SecretKey,
    fingerprint,
    public_keys,
)
from buildref.nix.storepath import StorePath
from buildsets import salt
from cacheserver import CacheServer, Root
from helpers import Nix, nix_string


@dataclass(frozen=True)
class KeyPair:
    secret_file: Path
    public: str  # name:base64, as in public_keys


@dataclass(frozen=True)
class Built:
    one: str
    two: str
    refs: str    # references one, two and itself
    never: str   # built, never copied to any cache
    nar_hash: dict[str, Hash]


@pytest.fixture(scope="module")
def keys(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    if shutil.which("nix-store") is None:
        pytest.fail("real Nix is required: nix-store not on PATH")
    directory = tmp_path_factory.mktemp("keys")
    pairs = {}
    for name in ("cache-a-1", "other-1"):
        sk, pk = directory / f"{name}.sk", directory / f"{name}.pk"
        nix.run("nix-store", "--generate-binary-cache-key", name, str(sk), str(pk))
        pairs[name] = KeyPair(sk, pk.read_text().strip())
    return pairs


@pytest.fixture(scope="module")
def built(nix: Nix, system: str, tmp_path_factory: pytest.TempPathFactory) -> Built:
    directory = tmp_path_factory.mktemp("cacheset")
    expr = directory / "set.nix"
    # Builders have an empty PATH: shell builtins only. Salted so every run really builds.
    expr.write_text(f"""
let
  mk = name: script: derivation {{
    inherit name;
    system = {nix_string(system)};
    builder = "/bin/sh";
    args = [ "-c" script ];
    salt = {nix_string(salt())};
  }};
in rec {{
  one = mk "one" "echo one > $out";
  two = mk "two" "echo two > $out";
  refs = mk "refs" "echo ${{two}} ${{one}} $out > $out";
  never = mk "never" "echo never > $out";
}}
""")
    paths = {}
    for attr in ("one", "two", "refs", "never"):
        paths[attr] = nix.run("nix-build", str(expr), "-A", attr, "--no-out-link").decode().strip()
    infos = json.loads(nix.run("nix", "path-info", "--json", *paths.values()))
    nar_hash = {info["path"]: Hash.parse(info["narHash"]) for info in infos}
    return Built(**paths, nar_hash=nar_hash)


def copy_to_cache(nix: Nix, directory: Path, paths: list[str], secret: Path | None) -> Path:
    uri = f"file://{directory}" + (f"?secret-key={secret}" if secret is not None else "")
    nix.run("nix", "copy", "--to", uri, *paths)
    return directory


@pytest.fixture
def signed_cache(nix: Nix, keys: dict[str, KeyPair], built: Built, tmp_path: Path) -> Path:
    """A real cache holding refs and its closure (one, two), signed with cache-a-1."""
    return copy_to_cache(nix, tmp_path / "cache", [built.refs], keys["cache-a-1"].secret_file)


def narinfo_file(cache: Path, path: str) -> Path:
    return cache / f"{StorePath.parse(path).hash_part}.narinfo"


def query(built: Built, *paths: str) -> list[tuple[str, Hash | None]]:
    return [(p, built.nar_hash[p]) for p in paths]


def presence(caches: list[CacheConfig], asked: list[tuple[str, Hash | None]],
             settings: ProbeSettings | None = None) -> tuple[CachePresence, ...]:
    async def run() -> tuple[CachePresence, ...]:
        async with CacheClient(caches, settings=settings) as client:
            return await client.presence(asked)
    return asyncio.run(run())


FAST = ProbeSettings(timeout=2.0)


class Clock:
    """Time for the memo, moved by the test (aiohttp's own timeouts still use real time)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- Signatures and fingerprints, proved against Nix ---------------------------------------------


def test_nix_written_narinfos_verify_with_the_real_key_only(
        signed_cache: Path, keys: dict[str, KeyPair], built: Built) -> None:
    real = public_keys([keys["cache-a-1"].public])
    other = public_keys([keys["other-1"].public])
    for path in (built.one, built.two, built.refs):
        info = NarInfoFile.parse(narinfo_file(signed_cache, path).read_bytes())
        assert info.store_path == path
        assert info.nar_hash == built.nar_hash[path]
        assert info.signed_by(real) == "cache-a-1"
        assert info.signed_by(other) is None
    refs = NarInfoFile.parse(narinfo_file(signed_cache, built.refs).read_bytes())
    # Full paths, sorted, the path itself included: exactly what the signed fingerprint joins.
    assert refs.references == tuple(sorted([built.one, built.two, built.refs]))
    assert refs.fingerprint == (f"1;{built.refs};sha256:{built.nar_hash[built.refs].nix32};"
                                f"{refs.nar_size};{','.join(sorted([built.one, built.two, built.refs]))}")


def test_secret_key_file_matches_its_public_key_file(keys: dict[str, KeyPair]) -> None:
    for pair in keys.values():
        secret = SecretKey.parse(pair.secret_file.read_text())
        assert str(secret.public_key()) == pair.public
        assert PublicKey.parse(pair.public) == secret.public_key()


def nix_verify(nix: Nix, cache: Path, public_key: str, path: str) -> int:
    """`nix store verify` of the signature only; 0 trusted, 2 untrusted (Nix's own exit codes)."""
    proc = subprocess.run(
        ["nix", "store", "verify", "--no-contents", "--store", f"file://{cache}",
         "--trusted-public-keys", public_key, path],
        env=nix.env, capture_output=True, check=False)
    assert proc.returncode in (0, 2), proc.stderr.decode(errors="replace")
    return proc.returncode


def test_nix_accepts_what_we_sign(nix: Nix, keys: dict[str, KeyPair], built: Built, tmp_path: Path) -> None:
    cache = copy_to_cache(nix, tmp_path / "unsigned", [built.refs], None)
    real = keys["cache-a-1"]
    assert nix_verify(nix, cache, real.public, built.refs) == 2  # control: Nix rejects it unsigned

    secret = SecretKey.parse(real.secret_file.read_text())
    for path in (built.one, built.two, built.refs):  # the closure, for the copy below
        target = narinfo_file(cache, path)
        unsigned = NarInfoFile.parse(target.read_bytes())
        assert unsigned.sigs == ()
        sig = secret.sign(unsigned.fingerprint.encode())
        target.write_text(replace(unsigned, sigs=(sig,)).render())
    assert nix_verify(nix, cache, real.public, built.refs) == 0
    assert nix_verify(nix, cache, keys["other-1"].public, built.refs) == 2

    # Nix reads the copy back through the cache with require-sigs on (the default).
    store = tmp_path / "store"
    nix.run("nix", "copy", "--from", f"file://{cache}", "--to", str(store),
            "--option", "trusted-public-keys", real.public, built.refs)
    assert (store / built.refs.lstrip("/")).exists()


@pytest.mark.parametrize("form", ["base16", "sri"])
def test_fingerprint_uses_nix32_whatever_form_the_narinfo_spells(
        nix: Nix, signed_cache: Path, keys: dict[str, KeyPair], built: Built, form: str) -> None:
    target = narinfo_file(signed_cache, built.two)
    text = target.read_text()
    nar_hash = built.nar_hash[built.two]
    spelled = f"sha256:{nar_hash.hex}" if form == "base16" else nar_hash.sri
    rewritten = text.replace(f"NarHash: sha256:{nar_hash.nix32}\n", f"NarHash: {spelled}\n")
    assert rewritten != text
    target.write_text(rewritten)
    info = NarInfoFile.parse(target.read_bytes())
    assert info.signed_by(public_keys([keys["cache-a-1"].public])) == "cache-a-1"
    # Nix agrees: the signature made over the nix32 form still holds.
    assert nix_verify(nix, signed_cache, keys["cache-a-1"].public, built.two) == 0


# --- The narinfo parser, as Nix 2.8's -------------------------------------------------------------

NARINFO = """StorePath: /nix/store/jl8swfr1dc0i97hndbk7mqmynzn4ikzq-b
URL: nar/0kwnzfnhkydqkdls2rc7ag3w795w1ffd9m2vl1ys33y5hsg961lz.nar.xz
Compression: xz
FileHash: sha256:0kwnzfnhkydqkdls2rc7ag3w795w1ffd9m2vl1ys33y5hsg961lz
FileSize: 124
NarHash: sha256:11hap619k9yv29jfxdq44d7fxwks93qsw8w8iwbgdjwxni9zsxlj
NarSize: 120
References: jl8swfr1dc0i97hndbk7mqmynzn4ikzq-b 9wlg3gdpg392jw082sbmr1dksd30hy2v-b.drv
Deriver: 9wlg3gdpg392jw082sbmr1dksd30hy2v-b.drv
Sig: b:xx
Sig: a:yy
"""


def test_narinfo_fields_defaults_and_unknown_keys() -> None:
    info = NarInfoFile.parse(NARINFO + "Sig: a:yy\nFutureKey: kept\n")
    assert info.store_path == "/nix/store/jl8swfr1dc0i97hndbk7mqmynzn4ikzq-b"
    assert info.references == ("/nix/store/9wlg3gdpg392jw082sbmr1dksd30hy2v-b.drv",
                               "/nix/store/jl8swfr1dc0i97hndbk7mqmynzn4ikzq-b")
    assert info.deriver == "/nix/store/9wlg3gdpg392jw082sbmr1dksd30hy2v-b.drv"
    assert info.sigs == ("a:yy", "b:xx")  # a set, as in Nix
    assert info.unknown == (("FutureKey", "kept"),)
    assert info.file_size == 124 and info.nar_size == 120
    no_compression = NarInfoFile.parse(NARINFO.replace("Compression: xz\n", ""))
    assert no_compression.compression == "bzip2"
    unknown_deriver = NarInfoFile.parse(NARINFO.replace("Deriver: 9wlg3gdpg392jw082sbmr1dksd30hy2v-b.drv",
                                                        "Deriver: unknown-deriver"))
    assert unknown_deriver.deriver is None
    assert NarInfoFile.parse(NARINFO + "CA: fixed:r:sha256:" + "1" * 52 + "\n").ca is not None


@pytest.mark.parametrize("broken", [
    NARINFO.replace("StorePath: /nix/store/jl8swfr1dc0i97hndbk7mqmynzn4ikzq-b\n", ""),
    NARINFO.replace("NarHash: sha256:11hap619k9yv29jfxdq44d7fxwks93qsw8w8iwbgdjwxni9zsxlj\n", ""),
    NARINFO.replace("URL: nar/0kwnzfnhkydqkdls2rc7ag3w795w1ffd9m2vl1ys33y5hsg961lz.nar.xz\n", ""),
    NARINFO.replace("NarSize: 120", "NarSize: 0"),
    NARINFO.replace("NarSize: 120", "NarSize: 12x"),
    NARINFO.replace("NarHash: sha256:", "NarHash: "),            # a bare digest: no algorithm
    NARINFO.replace("NarHash: sha256:11hap", "NarHash: sha256:11hae"),  # 'e' is not nix32
    NARINFO.replace("StorePath: /nix/store/", "StorePath: /other/store/"),
    NARINFO + "References: jl8swfr1dc0i97hndbk7mqmynzn4ikzq-b\n",   # References twice
    NARINFO + 2 * ("CA: fixed:r:sha256:" + "1" * 52 + "\n"),
    NARINFO + "CA: nonsense\n",
    NARINFO.rstrip("\n"),                                          # last line not ended
    NARINFO + "no colon here\n",
    b"\xff\xfe",
], ids=["no-storepath", "no-narhash", "no-url", "narsize-0", "narsize-junk", "bare-hash",
        "bad-nix32", "other-store", "references-twice", "ca-twice", "ca-junk", "no-newline",
        "no-colon", "not-utf8"])
def test_narinfo_nix_calls_corrupt(broken: str | bytes) -> None:
    with pytest.raises(BadNarInfo) as err:
        NarInfoFile.parse(broken, whence="x.narinfo")
    assert str(err.value).startswith("error: ")


def test_render_is_what_nix_wrote(signed_cache: Path, built: Built) -> None:
    for path in (built.one, built.refs):
        text = narinfo_file(signed_cache, path).read_text()
        assert NarInfoFile.parse(text).render() == text


def test_fingerprint_sorts_and_dedupes_references() -> None:
    h = Hash.of(HashAlgo.SHA256, b"x")
    assert fingerprint("/nix/store/p", h, 8, ["/nix/store/b", "/nix/store/a", "/nix/store/b"]) == (
        f"1;/nix/store/p;sha256:{h.nix32};8;/nix/store/a,/nix/store/b")
    with pytest.raises(BadNarInfo):
        fingerprint("/nix/store/p", h, 0, [])


def test_keys_and_signatures_reject_what_nix_rejects(keys: dict[str, KeyPair]) -> None:
    secret_text = keys["cache-a-1"].secret_file.read_text()
    # Nix's base64 decoder skips newlines: a key file with a trailing newline still reads.
    assert SecretKey.parse(secret_text + "\n") == SecretKey.parse(secret_text)
    for bad in ("nocolon", ":abc", "name:", "name:!!!!", "name:AAAA"):
        with pytest.raises(BadSigningKey):
            PublicKey.parse(bad)
    with pytest.raises(BadSigningKey):
        SecretKey.parse(keys["cache-a-1"].public)  # 32 bytes, not 64
    secret = SecretKey.parse(secret_text)
    keyring = public_keys([keys["cache-a-1"].public])
    info = NarInfoFile.parse(NARINFO)
    good = secret.sign(info.fingerprint.encode())
    short = good[: len("cache-a-1:") + 10]
    assert replace(info, sigs=(good,)).signed_by(keyring) == "cache-a-1"
    # A malformed signature under a trusted name does not hide a good one (Nix would throw).
    assert replace(info, sigs=(short, good)).signed_by(keyring) == "cache-a-1"
    assert replace(info, sigs=(short,)).signed_by(keyring) is None
    # Signed over another fingerprint (another NarSize): not valid for this one.
    assert replace(info, nar_size=121, sigs=(good,)).signed_by(keyring) is None


def test_nix_cache_info() -> None:
    info = CacheInfo.parse("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n\njunk\n")
    assert info == CacheInfo("/nix/store", True, 40)
    assert CacheInfo.parse("") == CacheInfo(None, None, None)
    with pytest.raises(BadNarInfo):
        CacheInfo.parse("Priority: high\n")


def test_memo_expires_and_stays_bounded() -> None:
    clock = Clock()
    memo: TtlLru[str, int] = TtlLru(2, clock)
    memo.put("a", 1, 10)
    memo.put("b", 2, 100)
    assert memo.get("a") == 1  # a is now the most recently used
    memo.put("c", 3, 100)      # evicts b
    assert (memo.get("a"), memo.get("b"), memo.get("c")) == (1, None, 3)
    clock.now += 10
    assert memo.get("a") is None and memo.get("c") == 3
    assert len(memo) == 1


# --- Presence against real caches ----------------------------------------------------------------


def test_present_absent_and_missing_from_a_file_cache(
        signed_cache: Path, keys: dict[str, KeyPair], built: Built) -> None:
    narinfo_file(signed_cache, built.two).unlink()  # missing narinfo, NAR still there
    config = CacheConfig(f"file://{signed_cache}", (keys["cache-a-1"].public,))
    (result,) = presence([config], query(built, built.one, built.refs, built.never, built.two))
    states = [(p.state, p.reason) for p in result.paths]
    assert states == [(Presence.PRESENT, Reason.VERIFIED), (Presence.PRESENT, Reason.VERIFIED),
                      (Presence.ABSENT, Reason.NO_NARINFO), (Presence.ABSENT, Reason.NO_NARINFO)]
    assert result.error is None and not result.holds_all
    assert result.state(built.refs) is Presence.PRESENT


def test_present_and_absent_over_http(signed_cache: Path, keys: dict[str, KeyPair], built: Built) -> None:
    async def run() -> tuple[CachePresence, ...]:
        async with CacheServer({"a": Root(signed_cache), "z": Root(signed_cache, xz=True)}) as server:
            caches = [CacheConfig(server.url("a"), (keys["cache-a-1"].public,)),
                      CacheConfig(server.url("z") + "/", (keys["cache-a-1"].public,))]
            async with CacheClient(caches, settings=FAST) as client:
                return await client.presence(query(built, built.one, built.refs, built.never))
    http, xz = asyncio.run(run())
    for result in (http, xz):
        assert [p.state for p in result.paths] == [Presence.PRESENT, Presence.PRESENT, Presence.ABSENT]
        assert result.paths[2].detail == "no narinfo (HTTP 404)"


def test_wrong_key_is_not_presence(signed_cache: Path, keys: dict[str, KeyPair], built: Built) -> None:
    config = CacheConfig(f"file://{signed_cache}", (keys["other-1"].public,))
    (result,) = presence([config], query(built, built.one))
    assert (result.paths[0].state, result.paths[0].reason) == (Presence.ABSENT, Reason.UNTRUSTED)
    assert "cache-a-1" in result.paths[0].detail


def test_a_hash_part_hit_naming_another_path_is_not_presence(
        signed_cache: Path, keys: dict[str, KeyPair], built: Built) -> None:
    real = public_keys([keys["cache-a-1"].public])
    # 1. The same hash part with another name: the URL is exactly that of one's real narinfo.
    one = StorePath.parse(built.one)
    alias = f"{one.store_dir}/{one.hash_part}-not-one"
    # 2. A correctly signed narinfo (one's, untouched) written at never's hash part.
    shutil.copy(narinfo_file(signed_cache, built.one), narinfo_file(signed_cache, built.never))
    crafted = NarInfoFile.parse(narinfo_file(signed_cache, built.never).read_bytes())
    assert crafted.signed_by(real) == "cache-a-1"  # only the StorePath check can reject it
    config = CacheConfig(f"file://{signed_cache}", (keys["cache-a-1"].public,))
    (result,) = presence([config], [(alias, None), (built.never, None), (built.one, None)])
    assert [(p.state, p.reason) for p in result.paths] == [
        (Presence.ABSENT, Reason.OTHER_STORE_PATH), (Presence.ABSENT, Reason.OTHER_STORE_PATH),
        (Presence.PRESENT, Reason.VERIFIED)]


def test_another_nar_hash_is_not_presence(signed_cache: Path, keys: dict[str, KeyPair], built: Built) -> None:
    target = narinfo_file(signed_cache, built.two)
    info = NarInfoFile.parse(target.read_bytes())
    other_hash = Hash.of(HashAlgo.SHA256, b"another build of two")
    changed = replace(info, nar_hash=other_hash, sigs=())
    secret = SecretKey.parse(keys["cache-a-1"].secret_file.read_text())
    target.write_text(replace(changed, sigs=(secret.sign(changed.fingerprint.encode()),)).render())
    config = CacheConfig(f"file://{signed_cache}", (keys["cache-a-1"].public,))
    (result,) = presence([config], [(built.two, built.nar_hash[built.two]), (built.two, None)])
    known, unknown = result.paths
    assert (known.state, known.reason) == (Presence.ABSENT, Reason.OTHER_NAR_HASH)
    # The re-signed narinfo is otherwise valid: without a known hash it counts.
    assert (unknown.state, unknown.reason) == (Presence.PRESENT, Reason.VERIFIED)


def test_cache_without_keys_or_for_another_store_is_unusable(
        signed_cache: Path, keys: dict[str, KeyPair], built: Built, tmp_path: Path) -> None:
    other_store = tmp_path / "other"
    shutil.copytree(signed_cache, other_store)
    (other_store / "nix-cache-info").write_text("StoreDir: /gnu/store\n")
    not_a_cache = tmp_path / "empty"
    not_a_cache.mkdir()

    async def run() -> tuple[tuple[CachePresence, ...], int]:
        async with CacheServer({"a": Root(signed_cache)}) as server:
            caches = [CacheConfig(server.url("a"), ()),
                      CacheConfig(f"file://{other_store}", (keys["cache-a-1"].public,)),
                      CacheConfig(f"file://{not_a_cache}", (keys["cache-a-1"].public,))]
            async with CacheClient(caches, settings=FAST) as client:
                results = await client.presence(query(built, built.one))
            return results, sum(server.requests.values())
    (no_keys, other, empty), requests = asyncio.run(run())
    assert requests == 0  # nothing in a cache without keys could count: it is not even asked
    for result in (no_keys, other, empty):
        assert result.paths[0].state is Presence.UNAVAILABLE
        assert result.paths[0].reason is Reason.CACHE_UNUSABLE
        assert result.error is not None and result.error.startswith("error: ")
    assert "no public_keys" in no_keys.error
    assert "'/gnu/store', not '/nix/store'" in other.error
    assert "does not appear to be a binary cache" in empty.error


def test_malformed_narinfo_is_unavailable(signed_cache: Path, keys: dict[str, KeyPair], built: Built) -> None:
    narinfo_file(signed_cache, built.one).write_text("StorePath: nonsense\n")
    config = CacheConfig(f"file://{signed_cache}", (keys["cache-a-1"].public,))
    (result,) = presence([config], query(built, built.one, built.two))
    assert (result.paths[0].state, result.paths[0].reason) == (Presence.UNAVAILABLE, Reason.MALFORMED)
    assert result.paths[1].state is Presence.PRESENT  # one corrupt file does not disable the cache


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port bound but not listening: connections to it are refused while the test runs."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_failing_caches_are_unavailable_never_absent(
        signed_cache: Path, keys: dict[str, KeyPair], built: Built, refused_port: int) -> None:
    key = (keys["cache-a-1"].public,)

    async def run() -> tuple[tuple[CachePresence, ...], CacheServer]:
        roots = {"ok": Root(signed_cache), "e500": Root(signed_cache, "fail-narinfo"),
                 "info500": Root(signed_cache, "fail-all"), "hang": Root(signed_cache, "hang-narinfo")}
        async with CacheServer(roots) as server:
            caches = [CacheConfig(server.url(name), key) for name in roots]
            caches.append(CacheConfig(f"http://127.0.0.1:{refused_port}", key))
            async with CacheClient(caches, settings=ProbeSettings(timeout=0.5)) as client:
                return await client.presence(query(built, built.one, built.never)), server
    (ok, e500, info500, hang, dead), server = asyncio.run(run())
    assert [p.state for p in ok.paths] == [Presence.PRESENT, Presence.ABSENT]
    for result, fragment in ((e500, "HTTP 500"), (info500, "HTTP 500"), (hang, "timed out after 0.5 s"),
                             (dead, "ClientConnectorError")):
        assert [p.state for p in result.paths] == [Presence.UNAVAILABLE, Presence.UNAVAILABLE], result
        assert all(p.reason is Reason.FETCH_FAILED for p in result.paths)
        assert result.error is not None and fragment in result.error, result.error
    assert server.requests["info500/nix-cache-info"] == 1
    assert server.requests["info500/" + narinfo_file(Path(), built.one).name] == 0


def test_a_failing_cache_is_left_alone_for_a_while(
        signed_cache: Path, keys: dict[str, KeyPair], built: Built) -> None:
    clock = Clock()
    settings = ProbeSettings(timeout=2.0, unavailable_ttl=60.0, per_cache=1)

    async def run() -> None:
        root = Root(signed_cache, "fail-narinfo")
        async with CacheServer({"a": root}) as server:
            caches = [CacheConfig(server.url("a"), (keys["cache-a-1"].public,))]
            async with CacheClient(caches, settings=settings, clock=clock) as client:
                first = await client.presence(query(built, built.one, built.two))
                # One slot: the first failure disables the cache before the second path is asked.
                assert server.narinfo_requests == 1
                assert [p.state for p in first[0].paths] == [Presence.UNAVAILABLE] * 2
                clock.now += 59
                again = await client.presence(query(built, built.one))
                assert again[0].paths[0].state is Presence.UNAVAILABLE
                assert server.narinfo_requests == 1  # still disabled: not asked
                root.mode = "serve"
                clock.now += 2
                healed = await client.presence(query(built, built.one, built.two))
                assert [p.state for p in healed[0].paths] == [Presence.PRESENT] * 2
                assert server.narinfo_requests == 3
    asyncio.run(run())


def test_answers_are_memoised_with_separate_ttls(
        signed_cache: Path, keys: dict[str, KeyPair], built: Built) -> None:
    clock = Clock()
    settings = ProbeSettings(timeout=2.0, positive_ttl=100.0, negative_ttl=10.0, cache_info_ttl=100.0)

    async def run() -> None:
        async with CacheServer({"a": Root(signed_cache)}) as server:
            caches = [CacheConfig(server.url("a"), (keys["cache-a-1"].public,))]
            asked = query(built, built.one, built.never)
            async with CacheClient(caches, settings=settings, clock=clock) as client:
                first = await client.presence(asked)
                assert sum(server.requests.values()) == 3  # nix-cache-info and two narinfos
                second = await client.presence(asked)
                assert second == first
                assert sum(server.requests.values()) == 3  # no request at all
                clock.now += 11  # past the negative TTL only
                third = await client.presence(asked)
                assert third == first
                assert server.requests["a/" + narinfo_file(Path(), built.never).name] == 2
                assert server.requests["a/" + narinfo_file(Path(), built.one).name] == 1
                clock.now += 100  # past the positive TTL (and nix-cache-info's)
                await client.presence(asked)
                assert server.requests["a/" + narinfo_file(Path(), built.one).name] == 2
                assert server.requests["a/nix-cache-info"] == 2
    asyncio.run(run())


def test_memo_is_bounded(signed_cache: Path, keys: dict[str, KeyPair], built: Built) -> None:
    settings = ProbeSettings(timeout=2.0, max_entries=2)

    async def run() -> None:
        async with CacheServer({"a": Root(signed_cache)}) as server:
            caches = [CacheConfig(server.url("a"), (keys["cache-a-1"].public,))]
            async with CacheClient(caches, settings=settings) as client:
                await client.presence(query(built, built.one, built.two, built.refs))
                assert server.narinfo_requests == 3
                # Only two answers fit: asking all three again needs at least one request.
                await client.presence(query(built, built.one, built.two, built.refs))
                assert server.narinfo_requests > 3
    asyncio.run(run())


def test_concurrency_per_cache_and_overall(keys: dict[str, KeyPair], built: Built,
                                           signed_cache: Path) -> None:
    # Distinct paths the cache lacks (a 404 costs the same request as a hit).
    one = StorePath.parse(built.one)
    paths = [f"{one.store_dir}/{Hash.of(HashAlgo.SHA256, str(i).encode()).nix32[:32]}-p{i}"
             for i in range(6)]
    key = (keys["cache-a-1"].public,)

    # The server holds every narinfo request until one more than the limit is in flight, which a
    # correct client never allows, so each batch is held for the fallback time: long enough for
    # any request beyond the limit to arrive and show in the maximum.
    async def per_cache() -> CacheServer:
        async with CacheServer({"a": Root(signed_cache)}, hold_until_in_flight=5,
                               hold_fallback=0.25) as server:
            settings = ProbeSettings(timeout=10.0, per_cache=4, overall=100)
            async with CacheClient([CacheConfig(server.url("a"), key)], settings=settings) as client:
                (result,) = await client.presence([(p, None) for p in paths])
            assert all(p.state is Presence.ABSENT for p in result.paths)
            return server

    async def overall() -> CacheServer:
        async with CacheServer({"a": Root(signed_cache), "b": Root(signed_cache)},
                               hold_until_in_flight=6, hold_fallback=0.25) as server:
            settings = ProbeSettings(timeout=10.0, per_cache=3, overall=5)
            caches = [CacheConfig(server.url("a"), key), CacheConfig(server.url("b"), key)]
            async with CacheClient(caches, settings=settings) as client:
                results = await client.presence([(p, None) for p in paths])
            assert all(p.state is Presence.ABSENT for r in results for p in r.paths)
            return server

    server = asyncio.run(per_cache())
    assert server.narinfo_requests == 6
    assert server.max_in_flight == 4  # reached, never passed
    server = asyncio.run(overall())
    assert server.narinfo_requests == 12
    assert server.max_in_flight == 5
    assert max(server.max_in_flight_by_root.values()) == 3


def test_concurrent_queries_share_one_request_per_path(
        signed_cache: Path, keys: dict[str, KeyPair], built: Built) -> None:
    # No memo at all: only sharing the request in flight can keep the second query from asking.
    settings = ProbeSettings(timeout=10.0, positive_ttl=0, negative_ttl=0, unavailable_ttl=0)

    async def run() -> None:
        release = asyncio.Event()
        async with CacheServer({"a": Root(signed_cache)}, release=release) as server:
            caches = [CacheConfig(server.url("a"), (keys["cache-a-1"].public,))]
            asked = query(built, built.one, built.never)
            async with CacheClient(caches, settings=settings) as client:
                first = asyncio.create_task(client.presence(asked))
                await server.wait_for_requests(2)  # both narinfo requests are held at the server
                second = asyncio.create_task(client.presence(asked))
                for _ in range(20):  # let the second query reach its lookups (no I/O on the way)
                    await asyncio.sleep(0)
                release.set()
                assert await first == await second
                assert server.narinfo_requests == 2
    asyncio.run(run())


def test_cache_urls_and_keys_are_checked_when_the_client_is_made(keys: dict[str, KeyPair]) -> None:
    assert cache_base("https://cache.example.org/?priority=10") == "https://cache.example.org"
    assert cache_base("file:///srv/cache/") == "file:///srv/cache"
    for url in ("ftp://cache.example.org", "file://relative/dir", "cache.example.org"):
        with pytest.raises(BadConfig):
            CacheClient([CacheConfig(url, (keys["cache-a-1"].public,))])
    with pytest.raises(BadConfig) as err:
        CacheClient([CacheConfig("https://cache.example.org", ("cache-a-1:short",))])
    assert str(err.value).startswith("error: binary cache 'https://cache.example.org': public key")
