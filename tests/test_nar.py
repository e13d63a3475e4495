"""NAR serialisation of files on disk, byte for byte against `nix-store --dump`."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from buildref.nix.nar import dump_path, hash_path
from helpers import Nix, assert_error_line, buildref


def _random_tree(root: Path, rng: random.Random) -> None:
    names = [b"a", b"a.b", b"a-b", b"a0", b"B", b"\xc3\xa9", b"bad\xff", b"x y", b".dot"]
    root.mkdir()
    dirs = [os.fsencode(root)]
    for _ in range(rng.randint(5, 40)):
        parent = rng.choice(dirs)
        target = os.path.join(parent, rng.choice(names))
        if os.path.lexists(target):
            continue
        roll = rng.random()
        if roll < 0.3:
            os.mkdir(target)
            dirs.append(target)
        elif roll < 0.45:
            os.symlink(rng.choice([b"a", b"/etc/hostname", b"../nowhere", b"\xc3\xa9"]), target)
        else:
            size = rng.choice([0, 1, 7, 8, 9, 100, 4096, 1 << 20]) if rng.random() < 0.95 else 3 << 20
            with open(target, "wb") as f:
                f.write(rng.randbytes(size))
            os.chmod(target, 0o755 if rng.random() < 0.3 else 0o644)
    deep = os.fsencode(root) + b"/deep"
    os.makedirs(deep + b"/d" * 40)
    with open(deep + b"/d" * 40 + b"/leaf", "wb") as f:
        f.write(b"leaf")


@pytest.mark.parametrize("seed", range(6))
def test_nar_bytes_equal_nix_store_dump(nix: Nix, tmp_path: Path, seed: int) -> None:
    root = tmp_path / "tree"
    _random_tree(root, random.Random(seed))
    chunks: list[bytes] = []
    dump_path(root, chunks.append)
    assert b"".join(chunks) == nix.run("nix-store", "--dump", str(root))
    assert hash_path(root).nar_hash.sri == nix.run("nix", "hash", "path", str(root)).decode().strip()


@pytest.mark.parametrize("kind", ["empty file", "executable", "symlink", "empty dir"])
def test_single_objects(nix: Nix, tmp_path: Path, kind: str) -> None:
    target = tmp_path / "obj"
    if kind == "empty file":
        target.write_bytes(b"")
    elif kind == "executable":
        target.write_bytes(b"#!/bin/sh\n")
        target.chmod(0o700)
    elif kind == "symlink":
        target.symlink_to("/dangling/target")
    else:
        target.mkdir()
    chunks: list[bytes] = []
    dump_path(target, chunks.append)
    assert b"".join(chunks) == nix.run("nix-store", "--dump", str(target))


def test_hash_path_command_equals_nix_store_add(nix: Nix, tmp_path: Path) -> None:
    root = tmp_path / "my-src"
    _random_tree(root, random.Random(42))
    got = json.loads(buildref("hash", "--path", str(root), "--json").stdout)
    assert got["storePath"] == nix.run("nix-store", "--add", str(root)).decode().strip()
    assert got["narHash"] == nix.run("nix", "hash", "path", str(root)).decode().strip()
    named = json.loads(buildref("hash", "--path", str(root), "--name", "other", "--json").stdout)
    assert named["narHash"] == got["narHash"] and named["storePath"].endswith("-other")


def test_unsupported_files_and_bad_names_are_errors(tmp_path: Path) -> None:
    fifo = tmp_path / "dir"
    fifo.mkdir()
    os.mkfifo(fifo / "pipe")
    assert_error_line(buildref("hash", "--path", str(fifo), check=False), "unsupported type")
    assert_error_line(buildref("hash", "--path", str(tmp_path / "missing"), check=False), "cannot read")
    bad_name = buildref("hash", "--path", str(fifo), "--name", "a b", check=False)
    assert_error_line(bad_name, "illegal character")
