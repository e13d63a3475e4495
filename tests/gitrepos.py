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
# Files that git archive may rewrite, by the attributes below.
REWRITE_FILES = [b"w.bat", b"w.crlf", b"w.auto", b"w.raw", b"w.id", b"w.sub", b"w.mac", b"w.in", b"w.win",
                 b"v.sub", b"w.keep"]
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
# git archive's rewrites: end of lines (text, eol, crlf, binary, text=auto), ident, export-subst,
# macros (defined at the root only), and lines git drops (a bad attribute name).
REWRITE_ATTRIBUTE_LINES = [
    b"*.bat text eol=crlf", b"*.crlf eol=crlf", b"*.auto text=auto eol=crlf", b"*.raw -text eol=crlf",
    b"*.id ident", b"*.sub export-subst", b"* text=auto", b"*.in crlf eol=crlf", b"*.win crlf=input eol=crlf",
    b"*.mac crlfy", b"[attr]crlfy text eol=crlf ident", b"[attr]binary -text ident", b"*.bin binary",
    b"data.bin eol=crlf", b"README export-subst ident eol=crlf", b"*.txt eol=crlf", b"run.sh eol=crlf binary",
    b"*.keep eol=crlf -bad!name", b"sub/** export-subst", b"w.* working-tree-encoding=utf-8",
    b"*.sub eol=crlf text", b"x.txt crlfy -crlfy", b".gitattributes export-ignore", b"w.keep export-ignore",
]
REWRITE_NESTED_LINES = [b"*.bat -text", b"*.id -ident", b"*.sub !export-subst", b"[attr]crlfy -text",
                        b"*.log eol=crlf", b"w.* text=auto", b"*.mac -crlfy", b"* ident"]
# Placeholders that are a function of the commit (the ones git archive expands from fetch-time
# state are refused by buildref and tested on their own).
PURE_PLACEHOLDERS = [
    b"%H", b"%T", b"%P", b"%an", b"%ae", b"%al", b"%ad", b"%aD", b"%at", b"%ai", b"%aI", b"%as", b"%cn",
    b"%ce", b"%cl", b"%cd", b"%cD", b"%ct", b"%ci", b"%cI", b"%cs", b"%s", b"%f", b"%b", b"%B", b"%e",
    b"%n", b"%%", b"%x41", b"%x0a", b"%m", b"%G?", b"%GT", b"%GG", b"%N", b"%S", b"%gd", b"%+s", b"%-b",
    b"% b", b"%Cred", b"%C(auto)", b"%Creset", b"%w()", b"%<x", b"%Q", b"%+Q", b"%-N", b"%ax", b"%x4",
]
TZS = ["+0000", "+0530", "-0700", "-0000", "-0001", "+1400", "-1230"]


def _env(seconds: int, tz: str = "+0000") -> dict[str, str]:
    stamp = f"{seconds} {tz}"
    return {**os.environ, "GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp,
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}


class RandomRepo:
    def __init__(self, path: Path, seed: int, export_ignore: bool = True, rewrites: bool = True) -> None:
        self.path = path
        self.root = os.fsencode(path)
        self.rng = random.Random(seed)
        self.export_ignore = export_ignore
        self.rewrites = rewrites and export_ignore
        self.tz = "+0000"
        self.time = 1_600_000_000 + seed * 1000
        self.gitlinks: dict[bytes, str] = {}
        self.revs: list[str] = []
        path.mkdir(parents=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str | bytes, input: bytes | None = None) -> str:
        proc = subprocess.run(["git", "-C", self.root, *args], capture_output=True, check=True,
                              env=_env(self.time, self.tz), input=input)
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
        if any(link.startswith(rel + b"/") for link in self.gitlinks):
            return False  # a gitlink below: no directory on disk says so
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
        if self.rewrites and self.rng.random() < 0.4:
            name = self.rng.choice(REWRITE_FILES)
        else:
            name = self.rng.choice(FILES + TRICKY)
        return directory + b"/" + name if directory else name

    def _random_data(self) -> bytes:
        roll = self.rng.random()
        if roll < 0.1:
            return b""
        if roll < 0.13:
            return self.rng.randbytes(self.rng.randint(1 << 20, 3 << 20))  # large
        if self.rewrites and roll < 0.7:
            return self.text_data()
        return self.rng.randbytes(self.rng.randint(1, 3000))

    def format_string(self) -> bytes:
        """A ``$Format:...$`` body of placeholders that depend on the commit alone, and text."""
        rng = self.rng
        pieces = [*PURE_PLACEHOLDERS, b" ", b"-", b"x", b"\n"]
        return b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))

    def text_data(self) -> bytes:
        """Text as git's end-of-line rules see it: LF, CRLF, mixed, lone CR, NUL, control bytes,
        a trailing ^Z; with $Id$ keywords and $Format:...$ placeholders."""
        rng = self.rng
        words = [b"alpha", b"beta gamma", b"\t", b"$Id$", b"$Id: old $", b"$Id: a b $", b"$Id:$", b"$Id:\n$",
                 b"$Id", b"$Format:", b"$", b"\x1b", b"\x7f"]
        words += [b"$Format:" + self.format_string() + b"$" for _ in range(4)]
        endings = {
            "lf": [b"\n"], "crlf": [b"\r\n"], "mixed": [b"\n", b"\r\n"], "lonecr": [b"\n", b"\r"],
            "nul": [b"\n", b"\0"], "none": [b""],
        }[rng.choice(["lf", "lf", "crlf", "mixed", "lonecr", "nul", "none"])]
        out = bytearray()
        for _ in range(rng.randint(1, 12)):
            out += b" ".join(rng.choice(words) for _ in range(rng.randint(0, 4)))
            out += rng.choice(endings)
        if rng.random() < 0.1:
            out += b"\x1a"
        if rng.random() < 0.05:
            out += bytes(range(1, 32)) * rng.randint(1, 3)  # mostly control bytes: "binary"
        return bytes(out)

    def write_attributes(self) -> None:
        rng = self.rng
        lines = rng.sample(ATTRIBUTE_LINES, rng.randint(1, 4))
        if self.rewrites:
            lines += rng.sample(REWRITE_ATTRIBUTE_LINES, rng.randint(4, 12))
            rng.shuffle(lines)
        self.write(b".gitattributes", b"\n".join(lines) + b"\n")
        if rng.random() < 0.5:
            nested = rng.sample(NESTED_ATTRIBUTE_LINES, rng.randint(1, 3))
            if self.rewrites:
                nested += rng.sample(REWRITE_NESTED_LINES, rng.randint(1, 3))
            self.write(b"sub/.gitattributes", b"\r\n".join(nested) + b"\r\n")

    def mutate(self) -> None:
        rng = self.rng
        if self.rewrites:
            if not self.revs:
                self.write_attributes()  # from the first commit on, so that rewrites get exercised
            self.write(rng.choice([b"", b"a/", b"sub/"]) + rng.choice(REWRITE_FILES), self.text_data())
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
                self.write_attributes()
            else:
                self.remove(rel)

    def commit(self) -> str:
        self.time += self.rng.randint(1, 100_000)
        self.git("add", "-A")
        if self.rewrites:
            self._stage_unfiltered()
            self.tz = self.rng.choice(TZS)
        for rel, oid in self.gitlinks.items():
            self.git("update-index", "--add", "--cacheinfo", f"160000,{oid},".encode() + rel)
        message = f"commit {len(self.revs)}"
        if self.rewrites and self.rng.random() < 0.5:
            message = self.rng.choice(["fix: the thing.. again", "  two\nline subject  ", "Ünïcode ✓"])
            message += self.rng.choice(["", "\n\nbody\n\n\nmore body  \n", "\n \n\t\nbody after blanks"])
        self.git("commit", "-q", "--allow-empty", "--cleanup=verbatim", "-m", message)
        rev = self.git("rev-parse", "HEAD")
        self.revs.append(rev)
        return rev

    def _stage_unfiltered(self) -> None:
        """Stage regular files with the bytes written, not as ``git add`` filters them (it would
        normalise CRLF in text files and collapse ``$Id: ... $``): blobs with CRLF, lone CR and
        expanded keywords are what git archive's rules must cope with."""
        listing = subprocess.run(["git", "-C", self.root, "ls-files", "-s", "-z"], capture_output=True,
                                 check=True).stdout
        paths = []
        for record in listing.split(b"\0"):
            if record:
                mode, _, _, path = record.replace(b"\t", b" ", 1).split(b" ", 3)
                if mode in (b"100644", b"100755"):
                    paths.append((mode, path))
        if not paths:
            return
        oids = self.git("hash-object", "-w", "--no-filters", "--stdin-paths",
                        input=b"".join(p + b"\n" for _, p in paths)).split()
        info = b"".join(mode + b" " + oid.encode() + b"\t" + path + b"\0"
                        for (mode, path), oid in zip(paths, oids, strict=True))
        self.git("update-index", "-z", "--index-info", input=info)

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


Tree = dict[bytes, tuple[str, bytes]]  # path -> ("file" | "exec" | "link" | "dir", contents)


def read_tree(root_path: Path) -> Tree:
    """A directory as a ``Tree`` (to compare what git archive, Nix and buildref write)."""
    found: Tree = {}
    root = os.fsencode(root_path)
    for top, dirs, files in os.walk(root):
        rel = os.path.relpath(top, root)
        prefix = b"" if rel == b"." else rel + b"/"
        for name in dirs:
            if os.path.islink(os.path.join(top, name)):
                found[prefix + name] = ("link", os.readlink(os.path.join(top, name)))
            else:
                found[prefix + name] = ("dir", b"")
        for name in files:
            path = os.path.join(top, name)
            if os.path.islink(path):
                found[prefix + name] = ("link", os.readlink(path))
            else:
                with open(path, "rb") as f:
                    found[prefix + name] = ("exec" if os.access(path, os.X_OK) else "file", f.read())
    return found



def read_nar(data: bytes) -> Tree:
    """The file system object a NAR describes (the reader is small: buildref writes, Nix judges)."""
    pos = 0

    def string() -> bytes:
        nonlocal pos
        length = int.from_bytes(data[pos:pos + 8], "little")
        value = data[pos + 8:pos + 8 + length]
        pos += 8 + length + (-length % 8)
        return value

    def expect(*words: bytes) -> None:
        for word in words:
            got = string()
            assert got == word, (got, word)

    found: Tree = {}

    def node(path: bytes) -> None:
        expect(b"(", b"type")
        kind = string()
        if kind == b"regular":
            tag = string()
            executable = tag == b"executable"
            if executable:
                expect(b"", b"contents")
            found[path] = ("exec" if executable else "file", string())
            expect(b")")
        elif kind == b"symlink":
            expect(b"target")
            found[path] = ("link", string())
            expect(b")")
        else:
            if path:
                found[path] = ("dir", b"")
            while (tag := string()) == b"entry":
                expect(b"(", b"name")
                name = string()
                expect(b"node")
                node(path + b"/" + name if path else name)
                expect(b")")
            assert tag == b")"

    expect(b"nix-archive-1")
    node(b"")
    assert pos == len(data)
    return found
