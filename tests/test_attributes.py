"""The attribute matcher against `git check-attr` on random attribute files, macros and paths."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

from buildref.git.attributes import ARCHIVE_ATTRIBUTES, EMPTY, AttributeStack, Value, parse_attributes
from helpers import git

PATTERNS = [
    "*.log", "docs/", "/secret", "sub/**/tmp", "**/gen", "a.b", "[ab]?.c", "[!a]*.txt", "x\\*y",
    "**", "a/**", "**/b/**", "lib/*.so", "/top/*", "*", "?", "a[0-9]", "deep/**/leaf", "sub/",
    "b", "*.c", "a/b/c", "[[:digit:]]*", "**/*.md", "sub/**", "a*b*c", "[a-c]*", "*[!0-9]", "[[:upper:]]",
    '"sp ace"', '"a\\142"', '"a\\19"', '"a\\000b"', '"bad\\q"', '"open', '"x"y', "!a", '"!b"', "\\!c",
]
STATES = [
    "export-ignore", "-export-ignore", "!export-ignore", "export-ignore=x", "binary export-ignore",
    "text", "-text", "!text", "text=auto", "text=input", "eol=crlf", "eol=lf", "-eol", "crlf", "-crlf",
    "crlf=input", "ident", "-ident", "export-subst", "!export-subst", "binary", "-binary", "!binary",
    "mac", "-mac", "deep", "working-tree-encoding=UTF-16", "text eol=crlf", "eol=crlf -text",
    "ident bad!name", "-", "text=a=b", "-text=x", "diff", "unrelated=1 eol=lf",
    "cyc", "-cyc2",
]
MACROS = ["[attr]mac text eol=crlf ident", "[attr]mac -text", "[attr]deep mac export-subst",
          "[attr]binary -text eol=lf", "[attr] spaced text", "[attr]bad!name text", "[attr]cyc cyc2",
          "[attr]cyc2 cyc export-subst"]
NAMES = ["a", "b", "a19", '"a19', "!c", "c", "!a",
         "a.b", "ab.c", "bx.c", "x.log", "keep.log", "tmp", "gen", "secret", "top", "lib",
         "x.so", "n.txt", "a.txt", "x*y", "a5", "leaf", "deep", "sub", "docs", "readme.md", "abc", "9z",
         "sp ace", "ab"]
DIRS = ["", "a/", "sub/", "sub/x/", "docs/", "a/b/", "deep/deep/", "top/", "lib/", "b/"]


def _attributes(rng: random.Random, root: bool) -> str:
    lines = [f"{rng.choice(PATTERNS)} {rng.choice(STATES)} {rng.choice(STATES)}"[:60]
             for _ in range(rng.randint(1, 6))]
    lines += rng.sample(MACROS, rng.randint(0, 3 if root else 1))  # ignored outside the root
    if rng.random() < 0.3:
        lines.append("# comment export-ignore")
    if rng.random() < 0.1:
        lines.append("* text " + "x" * 2100)  # over git's line length limit: ignored
    rng.shuffle(lines)
    text = "\n".join(lines) + "\n"
    if rng.random() < 0.1:
        text += "\0\n* export-ignore eol=crlf\n"  # git stops reading at a NUL byte
    return text


def _git_value(raw: bytes) -> Value:
    return {b"set": True, b"unset": False, b"unspecified": None}.get(raw, raw)


def _clean_env(tmp: Path) -> dict[str, str]:
    """git with no configuration but the repository's (as Nix runs it in the tests)."""
    return {**os.environ, "HOME": str(tmp), "XDG_CONFIG_HOME": str(tmp / "xdg"), "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_ATTR_NOSYSTEM": "1"}


@pytest.mark.parametrize("seed", range(80))
def test_matches_git_check_attr(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q")
    files = {"": _attributes(rng, True)}
    for base in rng.sample(DIRS[1:], rng.randint(0, 3)):
        files[base] = _attributes(rng, False)
    for base, text in files.items():
        (repo / base).mkdir(parents=True, exist_ok=True)
        (repo / base / ".gitattributes").write_text(text)
        # Staged as written: `git add` would apply the attributes (working-tree-encoding...) to it.
        oid = git(repo, "hash-object", "-w", "--no-filters", base + ".gitattributes")
        git(repo, "update-index", "--add", "--cacheinfo", f"100644,{oid},{base}.gitattributes")

    stacks: dict[str, AttributeStack] = {}

    def stack_at(directory: str) -> AttributeStack:
        """The stack git builds for a directory: the root file (with its macros), then each
        ancestor's file, shallower first."""
        if directory not in stacks:
            if not directory:
                root = files.get("")
                stacks[""] = AttributeStack.root(parse_attributes(root.encode(), b"", macro_ok=True)
                                                 if root is not None else None)
            else:
                parent = directory[:-1].rsplit("/", 1)[0] + "/" if "/" in directory[:-1] else ""
                own = files.get(directory)
                below = stack_at(parent)
                stacks[directory] = below if own is None else below.push(
                    parse_attributes(own.encode(), directory.encode()))
        return stacks[directory]

    paths = []
    for _ in range(200):
        path = rng.choice(DIRS) + rng.choice(NAMES)
        paths.append(path + "/" if rng.random() < 0.3 else path)
    names = sorted(a.decode() for a in ARCHIVE_ATTRIBUTES)
    out = subprocess.run(["git", "-C", str(repo), "check-attr", "--cached", "--stdin", "-z", *names],
                         input="\0".join(paths).encode() + b"\0", capture_output=True, check=True,
                         env=_clean_env(tmp_path)).stdout
    fields = out.split(b"\0")
    checked = 0
    for i in range(0, len(fields) - 1, 3):
        path, attr, value = fields[i:i + 3]
        is_dir = path.endswith(b"/")
        name = path.rstrip(b"/")
        directory = name.rsplit(b"/", 1)[0].decode() + "/" if b"/" in name else ""
        got = stack_at(directory).value(name, is_dir, attr)
        assert got == _git_value(value), (path, attr, value, files)
        checked += 1
    assert checked == len(paths) * len(names)


def test_macros_only_at_the_root_and_expand_when_set() -> None:
    text = b"[attr]crlfy text eol=crlf\n*.a crlfy\n*.b -crlfy\n*.c binary\n*.d crlfy -text\n"
    root = AttributeStack.root(parse_attributes(text, b"", macro_ok=True))
    assert root.value(b"x.a", False, b"eol") == b"crlf"
    assert root.value(b"x.b", False, b"eol") is None  # unset: no expansion
    assert root.value(b"x.c", False, b"text") is False  # the built-in binary macro
    assert root.value(b"x.d", False, b"text") is False  # a later state of the line wins
    sub = root.push(parse_attributes(b"[attr]crlfy -text\n*.a -text\n", b"sub/"))
    assert sub.value(b"sub/x.a", False, b"text") is False
    assert sub.value(b"sub/x.a", False, b"eol") == b"crlf"  # the macro kept its root meaning
    assert not EMPTY.active and root.active


def test_inactive_stacks_change_nothing() -> None:
    """Attributes that cannot change what git archive writes leave the common case untouched."""
    stack = AttributeStack.root(parse_attributes(b"* text=auto\n*.png binary\n*.sh eol=lf\n", b"", True))
    assert not stack.active
    assert not stack.export_ignored(b"x.png", False)
