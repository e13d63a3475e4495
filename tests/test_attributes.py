"""The export-ignore matcher against `git check-attr` on random attribute files and paths."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from buildref.git.attributes import export_ignored, parse_attributes
from helpers import git

PATTERNS = [
    "*.log", "docs/", "/secret", "sub/**/tmp", "**/gen", "a.b", "[ab]?.c", "[!a]*.txt", "x\\*y",
    "**", "a/**", "**/b/**", "lib/*.so", "/top/*", "*", "?", "a[0-9]", "deep/**/leaf", "sub/",
    "b", "*.c", "a/b/c", "[[:digit:]]*", "**/*.md", "sub/**", "a*b*c", "[a-c]*", "*[!0-9]", "[[:upper:]]",
]
STATES = ["export-ignore", "-export-ignore", "!export-ignore", "export-ignore=x", "binary export-ignore"]
NAMES = ["a", "b", "a.b", "ab.c", "bx.c", "x.log", "keep.log", "tmp", "gen", "secret", "top", "lib",
         "x.so", "n.txt", "a.txt", "x*y", "a5", "leaf", "deep", "sub", "docs", "readme.md", "abc", "9z"]
DIRS = ["", "a/", "sub/", "sub/x/", "docs/", "a/b/", "deep/deep/", "top/", "lib/", "b/"]


def _attributes(rng: random.Random) -> str:
    lines = [f"{rng.choice(PATTERNS)} {rng.choice(STATES)}" for _ in range(rng.randint(1, 6))]
    if rng.random() < 0.3:
        lines.append('"sp ace" export-ignore')
    if rng.random() < 0.3:
        lines.append("# comment export-ignore")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("seed", range(80))
def test_matches_git_check_attr(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q")
    files = {"": _attributes(rng)}
    for base in rng.sample(DIRS[1:], rng.randint(0, 3)):
        files[base] = _attributes(rng)
    for base, text in files.items():
        (repo / base).mkdir(parents=True, exist_ok=True)
        (repo / base / ".gitattributes").write_text(text)
    git(repo, "add", "-A")

    rules = tuple(rule for base in sorted(files, key=lambda b: b.count("/"))
                  for rule in parse_attributes(files[base].encode(), base.encode()))
    paths = []
    for _ in range(200):
        path = rng.choice(DIRS) + rng.choice(NAMES)
        paths.append(path + "/" if rng.random() < 0.3 else path)
    out = subprocess.run(["git", "-C", str(repo), "check-attr", "--cached", "--stdin", "-z", "export-ignore"],
                         input="\0".join(paths).encode() + b"\0", capture_output=True, check=True).stdout
    fields = out.split(b"\0")
    for i in range(0, len(fields) - 1, 3):
        path, _, value = fields[i:i + 3]
        want = value == b"set"
        got = export_ignored(rules, path.rstrip(b"/"), path.endswith(b"/"))
        assert got == want, (path, value, files)
