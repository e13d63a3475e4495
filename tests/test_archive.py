"""What buildref says git archive writes, against `git archive | tar -x` itself (git 2.39, no
configuration) and against Nix 2.8's `builtins.fetchGit`, which runs it: end-of-line rewrites,
`ident`, `export-subst` placeholders, and the placeholders that cannot be known from the commit."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

from buildref.git import archive
from buildref.git.archive import ArchiveFails, ArchiveUnknown, CommitData, RefDependent
from buildref.git.pretty import Unexpandable, Why, format_subst
from buildref.git.source import GitRepository
from buildref.git.tree_nar import TreeRule
from gitrepos import RandomRepo, Tree, read_nar, read_tree
from helpers import Nix, assert_error_line, buildref, buildref_json, nix_string

SEEDS = range(24)


def _clean_env(tmp: Path) -> dict[str, str]:
    """git as Nix runs it in these tests: no global or system configuration or attributes."""
    return {**os.environ, "HOME": str(tmp), "XDG_CONFIG_HOME": str(tmp / "xdg"), "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_ATTR_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@example.org",
            "GIT_COMMITTER_NAME": "c", "GIT_COMMITTER_EMAIL": "c@example.org"}


def _git(repo: Path, *args: str, input: bytes | None = None, check: bool = True) -> bytes:
    proc = subprocess.run(["git", "-C", str(repo), *args], input=input, capture_output=True, check=False,
                          env=_clean_env(repo.parent))
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def _extracted(repo: Path, rev: str, into: Path, *git_options: str) -> Tree:
    """`git archive REV | tar -x`, read back from the file system."""
    into.mkdir()
    tar = subprocess.run(["git", "-C", str(repo), *git_options, "archive", rev], capture_output=True,
                         check=True, env=_clean_env(repo.parent)).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=tar, check=True)
    return read_tree(into)


def _buildref_tree(repo: Path, rev: str) -> Tree:
    source = GitRepository(str(repo))
    commit = source.resolve(rev)
    fragment = source.trees.fragment(commit.tree_id.raw, TreeRule.EXPORT_IGNORE,
                                     commit=source.commit_data(commit))
    return read_nar(b"".join(source.trees.dump(fragment)))


def _raw_tree(repo: Path, rev: str) -> Tree:
    source = GitRepository(str(repo))
    fragment = source.trees.fragment(source.resolve(rev).tree_id.raw, TreeRule.RAW)
    return read_nar(b"".join(source.trees.dump(fragment)))


@pytest.mark.parametrize("seed", SEEDS)
def test_random_repositories_equal_git_archive(tmp_path: Path, seed: int) -> None:
    """Every file, byte for byte, as `git archive | tar -x` writes it."""
    repo = RandomRepo(tmp_path / "repo", seed + 300)
    for i, rev in enumerate(repo.build(4)):
        want = _extracted(repo.path, rev, tmp_path / f"x{i}")
        got = _buildref_tree(repo.path, rev)
        assert sorted(got) == sorted(want)
        for path in want:
            assert got[path] == want[path], path


def test_random_repositories_do_rewrite(tmp_path: Path) -> None:
    """The random repositories above exercise each rewrite, so their equality proves something:
    LF to CRLF, $Id$ expansion, $Format:...$ expansion."""
    seen = {"crlf": 0, "ident": 0, "subst": 0, "kept binary": 0}
    for seed in SEEDS[:8]:
        repo = RandomRepo(tmp_path / f"repo{seed}", seed + 300)
        for i, rev in enumerate(repo.build(4)):
            want = _extracted(repo.path, rev, tmp_path / f"x{seed}-{i}")
            raw = _raw_tree(repo.path, rev)
            for path, (kind, data) in want.items():
                before = raw[path][1]
                if kind not in ("file", "exec"):
                    continue
                seen["crlf"] += data.count(b"\r\n") > before.count(b"\r\n")
                seen["ident"] += data.count(b"$Id: ") > before.count(b"$Id: ")
                seen["subst"] += data.count(b"$Format:") < before.count(b"$Format:")
                seen["kept binary"] += data == before and b"\0" in data and b"\n" in data
    assert all(count >= 5 for count in seen.values()), seen


# Pieces of random format strings: every placeholder family, with the magic prefixes, malformed
# ones git writes literally, and the ones buildref refuses.
FORMAT_PIECES = [
    b"%H", b"%h", b"%T", b"%t", b"%P", b"%p", b"%m", b"%d", b"%D", b"%S", b"%N", b"%e", b"%B", b"%b", b"%s",
    b"%f", b"%n", b"%%", b"%x41", b"%x00", b"%x4g", b"%x", b"%C(auto)", b"%C(red)", b"%C(auto,red)",
    b"%C(always,red)", b"%Cred", b"%Cgreen", b"%Cblue", b"%Creset", b"%Cfoo", b"%C(red", b"%w()",
    b"%w(0,0,0)", b"%w(20,2)", b"%w(x)", b"%w(0", b"%+w()", b"%<(5)", b"%<(-5)", b"%<(0)", b"%<|(5)",
    b"%>>(3,trunc)", b"%><(2)", b"%<(", b"%<x", b"%(describe)", b"%(describe:tags)", b"%(describeX",
    b"%(trailers)", b"%(trailers:key=x)", b"%gd", b"%gD", b"%gs", b"%gn", b"%gx", b"%g", b"%G?", b"%GG",
    b"%GS", b"%GK", b"%GF", b"%GP", b"%GT", b"%Gx", b"%G", b"%Q", b"%", b"%+s", b"%+b", b"%-b", b"%-s",
    b"% s", b"% b", b"%+Q", b"%-Q", b"%-(describe)", b"%+%", b"\0%H",
] + [b"%" + who + bytes([part]) for who in (b"a", b"c") for part in b"neldDrihstINELx"] + [b"%a", b"%c"]
TEXT_PIECES = [b"x", b" ", b"\n", b"\n\n", b"-", b"(", b")", b","]

IDENTS = [
    b"A U Thor <a@u.example> 1600000000 +0530", b"C <c@x> 1500000000 -0700",
    b"Tz <t@z> 1234567890 -0001", b"Tz <t@z> 1234567890 +0005", b"Tz <t@z> 1234567890 -1230",
    b"Zero <z@z> 0 +0000", b"Lead <l@l> 0001600000000 +0100", b"NoDate <n@d>", b"NoTz <n@t> 1600000000",
    b"<anon@x> 1600000000 +0000", b"Spaces   \t <s@s>   1600000000   +0200", b"No Mail 1600000000 +0000",
    b"Two > <a@b> > 1600000000 +0000", b"Late <l@l> 4102444800 +0000",
    b"Dotted <x.y@sub.example> 946684800 -0000", b"N\xc3\xa9 <e@\xc3\xa9> 1 +0100",
]
MESSAGES = [
    b"subject\n", b"subject\n\nbody\n", b"  spaced subject  \nsecond line\n\n\nbody  \n\n\n",
    b"\n\nafter blanks\n \nbody\n", b"dots... and -- dashes__ x.\n", b"Un\xc3\xafcode \xe2\x9c\x93\n",
    b"", b"ends in a dot .\n", b"only\r\nCR\r\n\r\nbody\r\n", b"fix(x): y\n\nSigned-off-by: A <a@b>\n",
    b"no newline",
]


def _commit(repo: Path, tree: str, parents: list[str], rng: random.Random) -> tuple[str, bytes]:
    """A commit object written as-is (`hash-object --literally`): headers git itself would not
    write (odd zones, missing dates, repeated authors, encodings, signatures) are all valid input."""
    lines = [b"tree " + tree.encode()] + [b"parent " + p.encode() for p in parents]
    lines.append(b"author " + rng.choice(IDENTS))
    if rng.random() < 0.1:
        lines.append(b"author " + rng.choice(IDENTS))  # git's pretty keeps the last one
    lines.append(b"committer " + rng.choice(IDENTS))
    roll = rng.random()
    if roll < 0.1:
        lines.append(b"encoding " + rng.choice([b"UTF-8", b"utf8", b"ISO-8859-1"]))
    elif roll < 0.15:
        lines.append(b"gpgsig -----BEGIN PGP SIGNATURE-----\n \n -----END PGP SIGNATURE-----")
    raw = b"\n".join(lines) + b"\n\n" + rng.choice(MESSAGES)
    oid = _git(repo, "hash-object", "-t", "commit", "-w", "--literally", "--stdin", input=raw)
    return oid.decode().strip(), raw


def _format(rng: random.Random) -> bytes:
    return b"".join(rng.choice(FORMAT_PIECES if rng.random() < 0.6 else TEXT_PIECES)
                    for _ in range(rng.randint(1, 5)))


REFUSED = {
    Why.REFS: (b"%d", b"%D", b"%(describe"),
    Why.FETCH_STATE: (b"%h", b"%t", b"%p", b"%aN", b"%aE", b"%aL", b"%cN", b"%cE", b"%cL", b"%ar", b"%ah",
                      b"%cr", b"%ch", b"%G"),
    Why.NOT_MODELLED: (b"%(trailers", b"%w(", b"%<", b"%>", b"%C(always", b"%a", b"%c", b"%e", b"%s", b"%b",
                       b"%B", b"%f", b"%Q", b"%", b"%x", b"%G"),
    Why.FAILS: (b"%ad", b"%aD", b"%ai", b"%aI", b"%as", b"%cd", b"%cD", b"%ci", b"%cI", b"%cs"),
}


@pytest.mark.parametrize("seed", range(12))
def test_placeholders_equal_git_archive(tmp_path: Path, seed: int) -> None:
    """`$Format:...$` in export-subst files of commits with every kind of header, each file against
    what `git archive` wrote; what buildref refuses is one of the placeholders it must refuse."""
    rng = random.Random(seed)
    repo = tmp_path / "repo"
    _git(tmp_path, "init", "-q", str(repo))
    files: dict[bytes, bytes] = {}
    for i in range(60):
        body = b"".join(b"$Format:" + _format(rng) + b"$" if rng.random() < 0.5 else rng.choice(TEXT_PIECES)
                        for _ in range(rng.randint(1, 4)))
        files[b"f%02d" % i] = body
    (repo / ".gitattributes").write_bytes(b"f* export-subst\n")
    for name, body in files.items():
        (repo / os.fsdecode(name)).write_bytes(body)
    _git(repo, "add", "-A")
    tree = _git(repo, "write-tree").decode().strip()
    parents: list[str] = []
    compared = refused = 0
    for n in range(6):
        these = parents if n % 3 else []  # every third commit a root commit
        oid, raw = _commit(repo, tree, these, rng)
        commit = CommitData(oid, tree, tuple(these), raw)
        try:
            want = _extracted(repo, oid, tmp_path / f"x{n}")
        except subprocess.CalledProcessError:
            want = None  # git archive died (a date it cannot show, a signature it chokes on)
        reasons = []
        for name, body in files.items():
            try:
                got = format_subst(body, commit)
            except Unexpandable as e:
                assert e.placeholder.startswith(REFUSED[e.why]), (e.placeholder, e.why, body)
                reasons.append(e.why)
                continue
            if want is not None:
                assert got == want[name][1], (name, body, raw)
                compared += 1
        refused += len(reasons)
        if want is None:  # then buildref must not have claimed to know every file
            assert Why.FAILS in reasons or (Why.FETCH_STATE in reasons and b"gpgsig" in raw), raw
        parents = [oid] + (parents[:1] if rng.random() < 0.5 else [])
    assert compared > 100 and refused > 20


def _repo(tmp_path: Path, files: dict[str, bytes], links: dict[str, str] | None = None,
          message: str = "one") -> tuple[Path, str]:
    """A repository of exactly these blobs (staged as written, not as `git add` filters them)."""
    repo = tmp_path / "repo"
    _git(tmp_path, "init", "-q", "-b", "main", str(repo))
    index = b""
    for name, data in files.items():
        oid = _git(repo, "hash-object", "-w", "--stdin", input=data).decode().strip()
        index += b"100644 " + oid.encode() + b"\t" + name.encode() + b"\0"
    for name, target in (links or {}).items():
        oid = _git(repo, "hash-object", "-w", "--stdin", input=target.encode()).decode().strip()
        index += b"120000 " + oid.encode() + b"\t" + name.encode() + b"\0"
    _git(repo, "update-index", "-z", "--index-info", input=index)
    _git(repo, "commit", "-q", "-m", message)
    return repo, _git(repo, "rev-parse", "HEAD").decode().strip()


def test_edge_cases_equal_git_archive(tmp_path: Path) -> None:
    """The boundaries of git's text heuristics and keyword rules, each against git archive."""
    text = b"a" * 128 + b"\x01\n"
    files = {
        ".gitattributes": b"*.auto text=auto eol=crlf\n*.bat text eol=crlf\n*.id ident\n"
                          b"[attr]crlfy eol=crlf\n*.mac crlfy\n",
        "eof.auto": text + b"\x1a",  # a trailing ^Z is not held against the file: still text
        "noeof.auto": text + b"\x02",  # one control byte too many for 128 printable ones: binary
        "few.auto": b"a" * 127 + b"\x01\n",
        "lonecr.auto": b"a\rb\n", "crlf.auto": b"a\r\nb\n", "nul.auto": b"a\0\nb\n", "empty.auto": b"",
        "crlf.bat": b"a\r\nb\nc", "nul.bat": b"a\0\n", "cr.bat": b"\r\n\r\r\n\n",
        "k.id": b"$Id$ $Id: x $ $Id: a b $ $Id:$ $Id:\n$ $Id $Id$$Id:y$ $Id: z\n$Id:abc",
        "short.id": b"$Id", "none.id": b"$I$d$",
        "sub/.gitattributes": b"[attr]crlfy -text\n*.mac2 crlfy\n",
        "sub/x.mac": b"a\nb\n", "sub/x.mac2": b"a\nb\n",
        "link/a.txt": b"a\nb\n",
    }
    # git reads a .gitattributes from the index whatever its mode: a symlink's target is its text.
    repo, rev = _repo(tmp_path, files, links={"link/.gitattributes": "*.txt text eol=crlf"})
    want = _extracted(repo, rev, tmp_path / "x")
    got = _buildref_tree(repo, rev)
    assert got == want
    assert want[b"eof.auto"][1].endswith(b"\r\n\x1a") and b"\r" not in want[b"noeof.auto"][1]
    assert want[b"link/a.txt"][1] == b"a\r\nb\r\n"


def test_big_files_are_written_unconverted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past core.bigFileThreshold git archive streams a blob as it is, unless it is export-subst.
    (The threshold is lowered on both sides to keep the test small.)"""
    files = {".gitattributes": b"*.bat text eol=crlf\nsubst.bat export-subst\n",
             "big.bat": b"x\n" * 100, "small.bat": b"x\n" * 10, "subst.bat": b"$Format:%H$\n" * 20}
    repo, rev = _repo(tmp_path, files)
    monkeypatch.setattr(archive, "BIG_FILE_THRESHOLD", 100)
    want = _extracted(repo, rev, tmp_path / "x", "-c", "core.bigFileThreshold=100")
    assert want[b"big.bat"][1] == files["big.bat"] and b"\r\n" in want[b"small.bat"][1]
    assert _buildref_tree(repo, rev) == want


ARCHIVAL = (b"node: $Format:%H$\nnode-date: $Format:%cI$\n"
            b"describe-name: $Format:%(describe:tags=true,match=*[0-9]*)$\nref-names: $Format:%D$\n")


def test_setuptools_scm_archival_is_ref_dependent(nix: Nix, tmp_path: Path) -> None:
    """setuptools-scm's .git_archival.txt: git archive fills describe-name and ref-names from the
    refs present when Nix fetches, so buildref refuses, and Nix indeed gives two hashes."""
    repo, rev = _repo(tmp_path, {".git_archival.txt": ARCHIVAL, "pkg/code.py": b"print(1)\n",
                                 ".gitattributes": b".git_archival.txt export-subst\n"})
    proc = buildref("hash", str(repo), "--rev", rev, check=False)
    assert_error_line(proc, "'.git_archival.txt'", "%(describe:tags=true,match=*[0-9]*)",
                      "refs present when Nix fetched")
    assert proc.returncode == 1
    # The raw variant, and directories without the file, are still known.
    assert buildref_json("hash", str(repo), "--rev", rev, "--rule", "raw")["rule"] == "raw"
    assert buildref_json("hash", str(repo), "--rev", rev, "--subdir", "pkg")["narHash"]
    source = GitRepository(str(repo))
    listing = source.list_sources(source.resolve(rev))
    unknown = [(u.subdir, u.rule, u.ref_dependent) for u in listing.unknown]
    assert unknown == [("", TreeRule.EXPORT_IGNORE, True)]
    assert {(s.subdir, s.rule) for s in listing.sources} == {
        ("", TreeRule.RAW), ("pkg", TreeRule.RAW), ("pkg", TreeRule.EXPORT_IGNORE)}
    assert sorted(s.subdir for s in source.tree_sources(source.resolve(rev))) == ["", "pkg", "pkg"]

    def fetch() -> tuple[str, bytes]:
        home = tmp_path / f"nixhome{len(list(tmp_path.glob('nixhome*')))}"  # a fresh fetcher cache
        fresh = Nix(home)
        expr = f"builtins.fetchGit {{ url = {nix_string(str(repo))}; rev = {nix_string(rev)}; }}"
        result = fresh.eval_json(f"let s = {expr}; in {{ inherit (s) narHash; path = s.outPath; }}")
        assert isinstance(result, dict)
        return result["narHash"], Path(result["path"], ".git_archival.txt").read_bytes()

    before, text_before = fetch()
    _git(repo, "tag", "v1.2", rev)
    after, text_after = fetch()
    assert before != after and b"v1.2" in text_after and b"v1.2" not in text_before
    assert f"node: {rev}\n".encode() in text_before


@pytest.mark.parametrize(("placeholder", "kind"), [
    ("%d", RefDependent), ("%D", RefDependent), ("%(describe)", RefDependent), ("%+d", RefDependent),
    ("%h", ArchiveUnknown), ("%p", ArchiveUnknown), ("%aN", ArchiveUnknown), ("%cr", ArchiveUnknown),
    ("%(trailers)", ArchiveUnknown), ("%w(40)", ArchiveUnknown),
])
def test_placeholders_that_depend_on_the_fetch_are_refused(tmp_path: Path, placeholder: str,
                                                            kind: type[ArchiveUnknown]) -> None:
    files = {".gitattributes": b"v.txt export-subst\n",
             "v.txt": f"$Format:%H$ $Format:{placeholder}$\n".encode()}
    repo, _ = _repo(tmp_path, files)
    _git(repo, "commit", "-q", "--allow-empty", "-m", "two")  # a parent, for %p
    proc = buildref("hash", str(repo), check=False)
    shown = placeholder.replace("%+", "%")
    assert_error_line(proc, "'v.txt'", shown)
    assert proc.returncode == 1
    refs = "refs present when Nix fetched" in proc.stderr.decode()
    assert refs == (kind is RefDependent)
    source = GitRepository(str(repo))
    with pytest.raises(kind):
        source.source("HEAD")
    assert source.source("HEAD", rule=TreeRule.RAW).rule is TreeRule.RAW


def test_git_archive_failures_are_reported(nix: Nix, tmp_path: Path) -> None:
    """working-tree-encoding set without a value makes git archive die: Nix cannot fetch the
    revision, nor any directory of it. An encoding with a value is converted by iconv: refused."""
    repo, rev = _repo(tmp_path, {".gitattributes": b"*.txt working-tree-encoding\n", "d/a.txt": b"x\n"})
    assert_error_line(buildref("hash", str(repo), check=False), "'d/a.txt'", "working-tree-encoding",
                      "Nix, fails")
    assert_error_line(buildref("hash", str(repo), "--subdir", "d", check=False), "Nix, fails")
    fetch = f"builtins.fetchGit {{ url = {nix_string(str(repo))}; rev = {nix_string(rev)}; }}"
    with pytest.raises(AssertionError, match="working-tree-encodings"):
        nix.eval_json(f"({fetch}).narHash")
    source = GitRepository(str(repo))
    listing = source.list_sources(source.resolve(rev))
    assert {(u.subdir, u.rule) for u in listing.unknown} == {("", TreeRule.EXPORT_IGNORE),
                                                             ("d", TreeRule.EXPORT_IGNORE)}
    with pytest.raises(ArchiveFails):
        source.source(rev, "d")

    other = tmp_path / "other"
    other.mkdir()
    repo, rev = _repo(other, {".gitattributes": b"*.txt working-tree-encoding=UTF-16\n", "a.txt": b"x\n",
                              "empty.txt": b""})
    assert_error_line(buildref("hash", str(repo), check=False), "'a.txt'", "iconv")


def test_files_and_directories_of_a_rewritten_tree_match_nix(nix: Nix, tmp_path: Path) -> None:
    """`--subdir` of a rewritten file or directory: what Nix copies out of the fetched tree."""
    files = {".gitattributes": b"*.bat text eol=crlf\nv.txt export-subst ident\n",
             "d/run.bat": b"echo\n", "d/v.txt": b"$Id$ $Format:%s (%cs)$\n", "d/e/x.bat": b"a\r\nb\n"}
    repo, rev = _repo(tmp_path, files, message="the subject")
    fetch = f"builtins.fetchGit {{ url = {nix_string(str(repo))}; rev = {nix_string(rev)}; }}"
    subdirs = ["d", "d/run.bat", "d/v.txt", "d/e"]
    copied = nix.eval_json(f"let s = {fetch}; in map (d: let p = /. + (builtins.unsafeDiscardStringContext "
                           f'"${{s}}/${{d}}"); in "${{p}}") [ {" ".join(nix_string(d) for d in subdirs)} ]')
    assert isinstance(copied, list)
    hashes = nix.run("nix", "hash", "path", *copied).decode().split()
    for subdir, path, nar_hash in zip(subdirs, copied, hashes, strict=True):
        got = buildref_json("hash", str(repo), "--rev", rev, "--subdir", subdir)
        assert (got["storePath"], got["narHash"]) == (path, nar_hash), subdir
    version = Path(copied[2]).read_bytes()
    assert version.startswith(b"$Id: ") and b"the subject (" in version
