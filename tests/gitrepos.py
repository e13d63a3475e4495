"""Random git repositories with every kind of entry Nix cares about, made with the real git."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

# Names whose order differs between git (directories sort as "name/") and NAR (raw bytes).
TRICKY = [b"a", b"a.b", b"a-b", b"a0", b"A", b"b", b"\xc3\xa9", b"\xe6\x97\xa5\xe6\x9c\xac",
          b"non-utf8-\xff", b"sp ace", b".hidden", b"x~", b"-dash"]
FILES = [b"x.txt", b"y.log", b"keep.log", b"tmp", b"gen", b"secret", b"data.bin", b"run.sh", b"README"]
DIRS = [b"", b"a", b"sub", b"sub/inner", b"sub/inner/tmp", b"docs", b"a/a.b", b"gen"]
ATTRIBUTE_LINES = [
    b"*.log export-ignore",
    b"docs/ export-ignore",
    b"/secret export-ignore",
    b"sub/**/tmp export-ignore",
    b"**/gen export-ignore",
    b"a.b export-ignore",
    b"*.bin export-ignore=yes",
    b'"sp ace" export-ignore',
    b"# a comment",
    b"*.txt text",
]
NESTED_ATTRIBUTE_LINES = [b"keep.log -export-ignore", b"*.txt export-ignore", b"tmp !export-ignore",
                          b"inner/ export-ignore"]


def _env(seconds: int) -> dict[str, str]:
    stamp = f"{seconds} +0000"
    return {**os.environ, "GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp,
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}


class RandomRepo:
    def __init__(self, path: Path, seed: int, export_ignore: bool = True) -> None:
        self.path = path
        self.root = os.fsencode(path)
        self.rng = random.Random(seed)
        self.export_ignore = export_ignore
        self.time = 1_600_000_000 + seed * 1000
        self.gitlinks: dict[bytes, str] = {}
        self.revs: list[str] = []
        path.mkdir(parents=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str | bytes) -> str:
        proc = subprocess.run(["git", "-C", self.root, *args], capture_output=True, check=True,
                              env=_env(self.time))
        return proc.stdout.decode().strip()

    # Writing the work tree ------------------------------------------------------------------

    def _abs(self, rel: bytes) -> bytes:
        return os.path.join(self.root, rel)

    def _free(self, rel: bytes) -> bool:
        """``rel`` can be created as a file: no parent is a non-directory, it is not a directory."""
        parts = rel.split(b"/")
        for i in range(1, len(parts)):
            parent = self._abs(b"/".join(parts[:i]))
            if (os.path.lexists(parent) and not os.path.isdir(parent)) or os.path.islink(parent):
                return False
            if b"/".join(parts[:i]) in self.gitlinks:
                return False
        target = self._abs(rel)
        return not (os.path.isdir(target) and not os.path.islink(target)) and rel not in self.gitlinks

    def _prepare(self, rel: bytes) -> bytes | None:
        if not self._free(rel):
            return None
        target = self._abs(rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.lexists(target):
            os.unlink(target)
        return target

    def write(self, rel: bytes, data: bytes, executable: bool = False) -> None:
        target = self._prepare(rel)
        if target is None:
            return
        with open(target, "wb") as f:
            f.write(data)
        os.chmod(target, 0o755 if executable else 0o644)

    def symlink(self, rel: bytes, to: bytes) -> None:
        target = self._prepare(rel)
        if target is not None:
            os.symlink(to, target)

    def remove(self, rel: bytes) -> None:
        target = self._abs(rel)
        if os.path.islink(target) or os.path.isfile(target):
            os.unlink(target)
        self.gitlinks.pop(rel, None)

    def _random_path(self) -> bytes:
        directory = self.rng.choice(DIRS)
        name = self.rng.choice(FILES + TRICKY)
        return directory + b"/" + name if directory else name

    def _random_data(self) -> bytes:
        roll = self.rng.random()
        if roll < 0.1:
            return b""
        if roll < 0.13:
            return self.rng.randbytes(self.rng.randint(1 << 20, 3 << 20))  # large
        return self.rng.randbytes(self.rng.randint(1, 3000))

    def mutate(self) -> None:
        rng = self.rng
        for _ in range(rng.randint(3, 12)):
            op = rng.random()
            rel = self._random_path()
            if op < 0.45:
                self.write(rel, self._random_data(), executable=rng.random() < 0.25)
            elif op < 0.55:
                kind = rng.choice(["relative", "absolute", "dangling"])
                to = {"relative": b"../" + rng.choice(FILES), "absolute": b"/etc/hostname",
                      "dangling": b"nowhere/at/all"}[kind]
                self.symlink(rel, to)
            elif op < 0.62:
                depth = rng.randint(20, 60)
                self.write(b"/".join([b"deep"] * depth) + b"/leaf", rng.randbytes(10))
            elif op < 0.67 and self._free(rel) and not os.path.lexists(self._abs(rel)):
                self.gitlinks[rel] = rng.randbytes(20).hex()
            elif op < 0.77 and self.export_ignore:
                lines = rng.sample(ATTRIBUTE_LINES, rng.randint(1, 4))
                self.write(b".gitattributes", b"\n".join(lines) + b"\n")
                if rng.random() < 0.5:
                    nested = rng.sample(NESTED_ATTRIBUTE_LINES, rng.randint(1, 3))
                    self.write(b"sub/.gitattributes", b"\r\n".join(nested) + b"\r\n")
            else:
                self.remove(rel)

    def commit(self) -> str:
        self.time += self.rng.randint(1, 100_000)
        self.git("add", "-A")
        for rel, oid in self.gitlinks.items():
            self.git("update-index", "--add", "--cacheinfo", f"160000,{oid},".encode() + rel)
        self.git("commit", "-q", "--allow-empty", "-m", f"commit {len(self.revs)}")
        rev = self.git("rev-parse", "HEAD")
        self.revs.append(rev)
        return rev

    def build(self, commits: int) -> list[str]:
        for _ in range(commits):
            self.mutate()
            self.commit()
        return self.revs


def tracked_dirs(repo: RandomRepo, rev: str) -> list[str]:
    """Directories present in ``rev`` (for --subdir cases), as text."""
    out = subprocess.run(["git", "-C", repo.root, "ls-tree", "-r", "-d", "--name-only", "-z", rev],
                         capture_output=True, check=True).stdout
    return [os.fsdecode(p) for p in out.split(b"\0") if p]
