"""`buildref drv show` / `drv verify` and the ATerm core against derivations real Nix wrote."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildref.localstore import DrvReader
from buildref.nix.aterm import parse, print_drv
from buildref.nix.derivation import OutputKind
from buildref.nix.drvhash import DrvHasher, verify
from buildref.nix.storepath import DEFAULT_STORE_DIR, nix32_encode
from drvsets import DrvSet
from helpers import Nix, assert_error_line, buildref

SEEDS = range(10)


@pytest.fixture(scope="module")
def drv_sets(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[str]]:
    """Each seed's top-level derivations, instantiated by Nix."""
    out = {}
    for seed in SEEDS:
        directory = tmp_path_factory.mktemp(f"set{seed}")
        out[seed] = nix.instantiate(DrvSet(directory, seed).write())
    return out


def _closure(roots: list[str]) -> list[str]:
    return DrvReader().closure(roots)


@pytest.mark.parametrize("seed", SEEDS)
def test_show_equals_nix_show_derivation(nix: Nix, drv_sets: dict[int, list[str]], seed: int) -> None:
    drvs = drv_sets[seed]
    shuffled = drvs[::-1] + drvs[:3]  # order and repeats must not matter, as for Nix
    assert buildref("drv", "show", *shuffled).stdout == nix.run("nix", "show-derivation", *shuffled)
    assert buildref("drv", "show", "--json", drvs[0]).stdout == nix.run("nix", "show-derivation", drvs[0])
    top = drvs[-1]
    assert buildref("drv", "show", "-r", top).stdout == nix.run("nix", "show-derivation", "-r", top)


@pytest.mark.parametrize("seed", SEEDS)
def test_verify_reproduces_every_path_nix_wrote(drv_sets: dict[int, list[str]], seed: int) -> None:
    proc = buildref("drv", "verify", "-r", "--json", *drv_sets[seed])
    results = json.loads(proc.stdout)
    assert results and all(r["ok"] for r in results), results
    assert {r["drvPath"] for r in results} == set(_closure(drv_sets[seed]))


@pytest.mark.parametrize("seed", SEEDS)
def test_parse_print_is_byte_identical(drv_sets: dict[int, list[str]], seed: int) -> None:
    for path in _closure(drv_sets[seed]):
        data = Path(path).read_bytes()
        assert print_drv(parse(data, "x")) == data, path


def test_canonical_files_hash_without_decoding(drv_sets: dict[int, list[str]]) -> None:
    """The shortcut for files Nix printed (splice the input hashes into the file's own bytes)
    gives the modulo hash that printing the decoded derivation gives, for every random drv; and
    the files it cannot take (non-canonical escapes, DrvWithVersion) exist and take the long way."""
    reader = DrvReader()
    fast = DrvHasher(reader.load, split=reader.split)
    slow = DrvHasher(reader.load)
    canonical = 0
    paths = [p for roots in drv_sets.values() for p in _closure(roots)]
    for path in paths:
        assert fast.path_modulo(path) == slow.path_modulo(path), path
        canonical += reader.split(path)[1].canonical
    assert 0 < canonical < len(paths)


def _all_drvs(drv_sets: dict[int, list[str]]) -> Iterator[tuple[str, bytes]]:
    for roots in drv_sets.values():
        for path in _closure(roots):
            yield path, Path(path).read_bytes()


def test_the_random_sets_cover_every_kind(drv_sets: dict[int, list[str]]) -> None:
    """The cases the issue lists all occur, so the comparisons above are not vacuous."""
    seen: set[str] = set()
    for _path, data in _all_drvs(drv_sets):
        drv = parse(data, "x")
        for o in drv.outputs:
            seen.add(o.kind.value)
            if o.kind is OutputKind.FIXED:
                seen.add(f"fixed:{o.hash_algo}")
        seen.update(k.decode() for k, _ in drv.env if k in (b"__json", b"passAsFile"))
        if len(drv.outputs) > 1:
            seen.add("multiple outputs")
        if any(p.endswith(".drv") for p in drv.input_srcs):
            seen.add("drvPath context")
        if any(not p.endswith(".drv") for p in drv.input_srcs):
            seen.add("input sources")
        if any(b"\xff" in v for _, v in drv.env):
            seen.add("non-utf8")
        if any(b"\r" in v or b"\t" in v or b"\\" in v for _, v in drv.env):
            seen.add("escapes")
    wanted = {"input-addressed", "fixed", "floating", "deferred", "impure", "__json", "passAsFile",
              "multiple outputs", "drvPath context", "input sources", "non-utf8", "escapes"}
    wanted |= {f"fixed:{m}{a}" for m in ("", "r:") for a in ("sha1", "sha256", "sha512")} | {"fixed:md5"}
    assert wanted <= seen, wanted - seen


def test_output_paths_match_what_nix_evaluates(nix: Nix, tmp_path: Path) -> None:
    """Output paths computed from the drv equal the outPath attributes Nix evaluates."""
    nix_file = DrvSet(tmp_path, 99, size=30, ca=False).write()
    listing = nix.eval_json(
        f"builtins.mapAttrs (_: d: {{ drv = d.drvPath; outs = builtins.listToAttrs (map (o: "
        f"{{ name = o; value = d.${{o}}.outPath; }}) (d.outputs or [ \"out\" ])); }}) (import {nix_file})"
    )
    assert isinstance(listing, dict)
    reader = DrvReader()
    hasher = DrvHasher(reader.load)
    for item in listing.values():
        computed = hasher.output_paths(reader.load(item["drv"]))
        assert computed == item["outs"]


def _fake_store_path(name: str) -> str:
    return f"{DEFAULT_STORE_DIR}/{nix32_encode(os.urandom(20))}-{name}"


@pytest.fixture
def store_file() -> Iterator[list[str]]:
    """Files this test writes into the store directory (not registered with Nix), removed after."""
    made: list[str] = []
    yield made
    for path in made:
        if os.path.exists(path):
            os.unlink(path)


def test_verify_reports_each_tampered_fact(drv_sets: dict[int, list[str]], store_file: list[str]) -> None:
    original = next(p for p, data in _all_drvs(drv_sets)
                    if b'"","","")' not in data and b'("out","/nix' in data)
    data = Path(original).read_bytes()
    drv = parse(data, "x")
    out = next(o for o in drv.outputs if o.name == "out")
    forged = data.replace(out.path.encode(), out.path[:-1].encode() + b"Z", 1)  # the outputs list only
    path = _fake_store_path(original.split("/")[-1].split("-", 1)[1])  # same name, other hash
    Path(path).write_bytes(forged)
    store_file.append(path)
    proc = buildref("drv", "verify", path, check=False)
    assert proc.returncode == 1
    lines = proc.stdout.decode().splitlines()
    assert any("derivation path" in line for line in lines), lines
    assert any("output 'out' path" in line and out.path in line for line in lines), lines
    assert len(lines) == 2, lines  # nothing else is wrong


def test_deep_dependency_chains_need_no_recursion(nix: Nix, tmp_path: Path) -> None:
    expr = tmp_path / "chain.nix"
    expr.write_text(
        "builtins.foldl' (prev: i: derivation { name = \"c${toString i}\"; system = \"x\"; "
        "builder = \"/bin/sh\"; inherit prev; }) \"\" (builtins.genList (i: i) 1500)"
    )
    top = nix.instantiate(expr)[0]
    reader = DrvReader()
    hasher = DrvHasher(reader.load)
    data, drv = reader.read(top)
    assert verify(top, data, drv, hasher) == []


def test_dynamic_derivation_terms_round_trip() -> None:
    text = (b'DrvWithVersion("xp-dyn-drv",[("out","","r:sha256","")],'
            b'[("/nix/store/0000000000000000000000000000000a-a.drv",(["out"],[("out",["out"])])),'
            b'("/nix/store/0000000000000000000000000000000b-b.drv",["dev","out"])],'
            b'["/nix/store/0000000000000000000000000000000c-src"],"x86_64-linux","/bin/sh",["-c","e\\"\\n"],'
            b'[("out","/1rz4g4znpzjwh1xymhjpm42vipw92pr73vdgl6xs1hycac8kf2n9")])')
    drv = parse(text, "dyn")
    assert drv.version == "xp-dyn-drv"
    assert drv.input_drvs[0][1].children[0][0] == "out"
    assert drv.args == (b"-c", b'e"\n')
    assert print_drv(drv) == text


@pytest.mark.parametrize("env", [
    b'("a","b")x("c","d")', b'("a","b"),', b'("a","b")("c","d")', b'x("a","b")', b'("a","b"),,("c","d")',
    b'("a","b") ', b'("a")', b'("a","b","c")', b'("a","b),("c","d")',
])
def test_malformed_environments_are_rejected(env: bytes) -> None:
    from buildref.errors import BadDerivation

    head = b'Derive([("out","/nix/store/0000000000000000000000000000000a-x","","")],[],[],"s","b",[],['
    text = head + env + b"])"
    with pytest.raises(BadDerivation):
        parse(text, "x")


def _random_bytes(rng: random.Random) -> bytes:
    alphabet = b'ab\\"\n\r\t${}()[],\x00\x01\x7f\xff\xc3\xa9 '
    return bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))


def test_any_value_survives_print_and_parse() -> None:
    rng = random.Random(5)
    for _ in range(300):
        env = sorted({_random_bytes(rng): _random_bytes(rng) for _ in range(rng.randint(0, 6))}.items())
        text = (b'Derive([("out","/nix/store/0000000000000000000000000000000a-x","","")],[],[],"sys",'
                + b'"' + _random_bytes(rng).replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'",[],[]'
                + b")")
        drv = parse(text, "x")
        drv2 = type(drv)(drv.name, drv.outputs, drv.input_drvs, drv.input_srcs, drv.system, drv.builder,
                         tuple(_random_bytes(rng) for _ in range(3)), tuple(env))
        assert parse(print_drv(drv2), "x") == drv2


BAD_DRVS = {
    "truncated": lambda d: d[: len(d) // 2],
    "empty": lambda d: b"",
    "garbage": lambda d: b"\x00\xffnot a derivation",
    "bad outputs": lambda d: d.replace(b"Derive([", b"Derive([(1,", 1),
    "trailing bytes": lambda d: d + b"x",
    "bad hash": lambda d: (b'Derive([("out","/nix/store/0000000000000000000000000000000a-x",'
                           b'"sha256","zz")],[],[],"s","b",[],[])'),
    "unclosed string": lambda d: d[:-5] + b'\\"])',
}


@pytest.mark.parametrize("kind", sorted(BAD_DRVS))
def test_bad_drv_files_are_one_line_errors(drv_sets: dict[int, list[str]], store_file: list[str],
                                           kind: str) -> None:
    data = Path(drv_sets[0][0]).read_bytes()
    path = _fake_store_path(f"bad-{kind.replace(' ', '-')}.drv")
    Path(path).write_bytes(BAD_DRVS[kind](data))
    store_file.append(path)
    for command in ("show", "verify"):
        assert_error_line(buildref("drv", command, path, check=False), path)


def test_paths_that_are_not_derivations_are_one_line_errors(tmp_path: Path) -> None:
    outside = tmp_path / "x.drv"
    outside.write_text("Derive(")
    assert_error_line(buildref("drv", "show", str(outside), check=False), "not in the Nix store")
    missing = _fake_store_path("missing.drv")
    assert_error_line(buildref("drv", "verify", missing, check=False), "cannot read derivation")
    short = f"{DEFAULT_STORE_DIR}/short-x.drv"
    assert_error_line(buildref("drv", "show", short, check=False), "not a store path")
    assert_error_line(buildref("drv", "show", _fake_store_path("x.txt"), check=False), "not a derivation")
