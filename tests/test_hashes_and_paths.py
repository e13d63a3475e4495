"""nix32, hash forms, store paths and name rules, each against the real Nix."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buildref.errors import BadHash, BadStorePath
from buildref.nix.hashes import Hash, HashAlgo, nix32_decode, nix32_encode
from buildref.nix.storepath import (
    Ingestion,
    StorePath,
    check_name,
    fixed_output_path,
    source_path,
    text_path,
)
from helpers import Nix, nix_string


def test_reference_vector() -> None:
    digest = hashlib.sha256(b"abc").digest()
    assert nix32_encode(digest) == "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"
    assert len(nix32_encode(bytes(20))) == 32


@given(st.sampled_from([16, 20, 32, 64]).flatmap(lambda n: st.binary(min_size=n, max_size=n)))
def test_nix32_round_trips(data: bytes) -> None:
    assert nix32_decode(nix32_encode(data), len(data)) == data


@pytest.mark.parametrize("algo", list(HashAlgo))
def test_hash_forms_agree_with_nix_hash(nix: Nix, algo: HashAlgo) -> None:
    rng = random.Random(algo.value)
    hashes = [Hash(algo, rng.randbytes(algo.size)) for _ in range(20)]
    hexes = [h.hex for h in hashes]
    base32 = nix.run("nix", "hash", "to-base32", "--type", algo.value, *hexes).decode().split()
    sri = nix.run("nix", "hash", "to-sri", "--type", algo.value, *hexes).decode().split()
    back = nix.run("nix", "hash", "to-base16", "--type", algo.value, *base32).decode().split()
    assert [h.nix32 for h in hashes] == base32
    assert [h.sri for h in hashes] == sri
    assert back == hexes
    for h, b32, s in zip(hashes, base32, sri, strict=True):
        for form in (h.hex, b32, h.base64):
            assert Hash.parse(form, algo) == h
        assert Hash.parse(s) == h
        assert Hash.parse(f"{algo.value}:{b32}") == h
        assert Hash.parse(f"{algo.value}:{h.hex}") == h


@pytest.mark.parametrize("bad", ["sha256-!!", "sha256:xyz", "md4:00", "abc", "sha1-AAAA",
                                 "sha256:" + "e" * 52, "sha256:" + "0" * 63])
def test_malformed_hashes_are_rejected(bad: str) -> None:
    with pytest.raises(BadHash) as info:
        Hash.parse(bad)
    assert str(info.value).startswith("error: ")


def test_text_paths_equal_builtins_tofile(nix: Nix) -> None:
    listing = nix.eval_json(
        'let a = builtins.toFile "a" "hello"; b = builtins.toFile "b.txt" "uses ${a}"; '
        'c = builtins.toFile "c" "${a} ${b}"; in [ a b c ]'
    )
    a = text_path(b"hello", "a")
    b = text_path(f"uses {a}".encode(), "b.txt", [a])
    c = text_path(f"{a} {b}".encode(), "c", [b, a])
    assert [a, b, c] == listing


def test_source_paths_equal_nix_store_add(nix: Nix, tmp_path: Path) -> None:
    from buildref.nix.nar import hash_path

    for i in range(5):
        target = tmp_path / f"thing{i}"
        if i % 2:
            target.mkdir()
            (target / "f").write_bytes(os.urandom(100))
        else:
            target.write_bytes(os.urandom(i * 1000))
        added = nix.run("nix-store", "--add", str(target)).decode().strip()
        assert source_path(hash_path(target).nar_hash, target.name) == added


@pytest.mark.parametrize("recursive", [False, True])
@pytest.mark.parametrize("algo", ["sha1", "sha256", "sha512", "md5"])
def test_fixed_output_paths_equal_nix_store_add_fixed(nix: Nix, tmp_path: Path, algo: str,
                                                      recursive: bool) -> None:
    from buildref.nix.nar import hash_path

    target = tmp_path / f"data-{algo}"
    target.write_bytes(os.urandom(300))
    args = ["nix-store", "--add-fixed", *(["--recursive"] if recursive else []), algo, str(target)]
    added = nix.run(*args).decode().strip()
    if recursive:
        digest = hashlib.new(algo)
        from buildref.nix.nar import dump_path

        dump_path(target, digest.update)
        content = Hash(HashAlgo(algo), digest.digest())
        assert HashAlgo(algo) != HashAlgo.SHA256 or content == hash_path(target).nar_hash
    else:
        content = Hash.of(HashAlgo(algo), target.read_bytes())
    method = Ingestion.RECURSIVE if recursive else Ingestion.FLAT
    assert fixed_output_path(method, content, target.name) == added


NAMES = ["a", "foo-1.2", "x+y", "q?=", "_", ".hidden", ".", "..", "-", ".-x", "a" * 211, "a" * 212,
         "", "a b", "é", "x/y", "tab\t", "semi;colon", "A.B-c_d+e?f=g", "0"]


def test_name_rules_match_nix(nix: Nix) -> None:
    for name in NAMES:
        proc_ok = True
        try:
            nix.run("nix-instantiate", "--eval", "--expr", f"builtins.toFile {nix_string(name)} \"x\"")
        except AssertionError:
            proc_ok = False
        try:
            check_name(name)
            ours = True
        except BadStorePath as e:
            assert str(e).startswith("error: ")
            ours = False
        assert ours == proc_ok, name


def test_store_path_parsing() -> None:
    path = text_path(b"x", "name")
    parsed = StorePath.parse(path)
    assert str(parsed) == path and parsed.name == "name"
    for bad in ["/tmp/x", "/nix/store/abc", "/nix/store/" + "e" * 32 + "-x", path + "/sub"]:
        with pytest.raises(BadStorePath):
            StorePath.parse(bad)
