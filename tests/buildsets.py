"""Small things for real Nix to build through the hook: every derivation is salted, so each test
run really builds (and Nix really runs the hook) instead of finding the outputs already there."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from helpers import git, nix_string


def salt() -> str:
    return uuid.uuid4().hex[:12]


def build_set(directory: Path, system: str) -> Path:
    """multi: two outputs; fod: a fixed output; chain1 <- chain2 <- chain3 (chain3 uses multi.dev)."""
    s = salt()
    fod_text = f"fixed-{s}"
    import hashlib

    fod_hash = hashlib.sha256(fod_text.encode()).hexdigest()
    text = f"""
let
  sh = "/bin/sh";
  mk = name: script: extra: derivation ({{
    inherit name;
    system = {nix_string(system)};
    builder = sh;
    args = [ "-c" script ];
    salt = {nix_string(s)};
  }} // extra);
in rec {{
  multi = mk "multi" "echo out > $out; echo dev > $dev" {{ outputs = [ "out" "dev" ]; }};
  fod = mk "fod" "printf %s {nix_string(fod_text)[1:-1]} > $out" {{
    outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = "{fod_hash}";
  }};
  chain1 = mk "chain1" "echo 1 > $out" {{}};
  chain2 = mk "chain2" "read x < ${{chain1}}; echo $x 2 > $out" {{}};
  chain3 = mk "chain3" "read x < ${{chain2}}; read y < ${{multi.dev}}; echo $x $y 3 > $out" {{}};
}}
"""
    path = directory / "set.nix"
    path.write_text(text)
    return path


def flake_repo(directory: Path, system: str) -> Path:
    """A git repository holding a flake whose package copies the flake's own source."""
    repo = directory / "flake"
    repo.mkdir()
    (repo / "flake.nix").write_text(f"""{{
  outputs = {{ self }}: {{
    packages.{system}.default = derivation {{
      name = "from-flake";
      system = {nix_string(system)};
      builder = "/bin/sh";
      args = [ "-c" "read x < ${{self}}/data; echo $x > $out" ];
    }};
  }};
}}
""")
    (repo / "data").write_text(f"flake data {salt()}\n")
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "flake")
    return repo
