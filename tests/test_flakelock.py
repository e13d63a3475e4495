"""flake.lock files written by the real `nix flake lock`, read back and cross-checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from buildref.errors import BadLockFile
from buildref.git.source import GitRepository
from buildref.nix.flakelock import parse_lock
from gitrepos import RandomRepo
from helpers import Nix


def _flake(path: Path, inputs: str, follows: str = "") -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "flake.nix").write_text(
        f"{{ inputs = {{ {inputs} {follows} }}; outputs = _: {{ }}; }}\n"
    )


def test_lock_from_real_nix(nix: Nix, tmp_path: Path) -> None:
    lib = RandomRepo(tmp_path / "lib", 11, export_ignore=False)
    lib.build(2)
    _flake(lib.path, "")
    lib.commit()
    data = RandomRepo(tmp_path / "data", 12)
    data.build(2)
    mid = tmp_path / "mid"
    _flake(mid, f'lib.url = "git+file://{lib.path}";')
    top = tmp_path / "top"
    _flake(
        top,
        f'lib.url = "git+file://{lib.path}"; mid.url = "path:{mid}"; '
        f'data = {{ url = "git+file://{data.path}?ref=main"; flake = false; }};',
        'mid.inputs.lib.follows = "lib";',
    )
    nix.run("nix", "flake", "lock", str(top))
    lock = parse_lock((top / "flake.lock").read_bytes())
    assert lock.version == 7
    by_path = {item.path: item.node for item in lock.inputs()}
    assert set(by_path) == {("data",), ("lib",), ("mid",)}
    assert lock.resolve(("mid", "lib")).name == by_path[("lib",)].name  # the follows
    mid_node = by_path[("mid",)]
    assert mid_node.inputs["lib"] == ("lib",)
    assert not by_path[("data",)].flake

    for name, repo in (("lib", lib), ("data", data)):
        locked = by_path[(name,)].locked
        assert locked is not None and locked.type == "git" and locked.rev is not None
        assert locked.rev_count is not None and locked.last_modified is not None
        # The lock's narHash is what buildref computes for the locked revision.
        info = GitRepository(str(repo.path)).source(locked.rev)
        assert locked.nar_hash == info.nar_hash
        assert locked.rev_count == info.rev_count
        assert locked.last_modified == info.last_modified
    path_locked = mid_node.locked
    assert path_locked is not None and path_locked.type == "path" and path_locked.path == str(mid)


def _lock(version: int, nodes: dict[str, object]) -> str:
    return json.dumps({"version": version, "root": "root", "nodes": nodes})


GITHUB = {"locked": {"type": "github", "owner": "NixOS", "repo": "nixpkgs", "rev": "a" * 40,
                     "lastModified": 1, "narHash": "sha256-" + "A" * 43 + "="},
          "original": {"type": "github", "owner": "NixOS", "repo": "nixpkgs"}}


@pytest.mark.parametrize("version", [5, 6, 7])
def test_versions_and_input_types(version: int) -> None:
    nodes = {
        "root": {"inputs": {"nixpkgs": "nixpkgs", "sub": "sub", "alias": ["sub", "np"]}},
        "nixpkgs": GITHUB,
        "sub": {"inputs": {"np": ["nixpkgs"]},
                "locked": {"type": "git", "url": "https://example.org/x.git", "rev": "b" * 40,
                           "ref": "main", "revCount": 3, "dir": "sub/flake",
                           "narHash": "sha256-" + "B" * 43 + "="}},
        "t": {"locked": {"type": "tarball", "url": "https://example.org/t.tar.gz",
                         "narHash": "sha256-" + "C" * 43 + "="}},
    }
    lock = parse_lock(_lock(version, nodes))
    assert lock.resolve(("alias",)).name == "nixpkgs"
    assert lock.resolve(("sub", "np")).name == "nixpkgs"
    sub = lock.nodes["sub"].locked
    assert sub is not None and sub.dir == "sub/flake" and sub.ref == "main" and sub.rev_count == 3
    gh = lock.nodes["nixpkgs"].locked
    assert gh is not None and gh.owner == "NixOS" and gh.nar_hash is not None


@pytest.mark.parametrize("text, message", [
    ("{", "not valid JSON"),
    (_lock(4, {"root": {}}), "version 4"),
    (_lock(7, {"root": {"inputs": {"x": "missing"}}}), "does not define"),
    (_lock(7, {"root": {"inputs": {"x": ["y"]}}}), "names no input"),
    (_lock(7, {"root": {"inputs": {"a": ["b"], "b": ["a"]}}}), "cycle"),
    (_lock(7, {"root": {"inputs": {"n": "n"}}, "n": {"locked": {"type": "svn"}}}), "unknown input type"),
    (_lock(7, {"root": {"inputs": {"n": "n"}}, "n": {"locked": {"type": "git", "narHash": "x"}}}),
     "node 'n'"),
])
def test_bad_lock_files(text: str, message: str) -> None:
    with pytest.raises(BadLockFile) as info:
        parse_lock(text)
    assert str(info.value).startswith("error: ") and message in str(info.value)
