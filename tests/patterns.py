"""The ways real projects bring git sources into a Nix build, as plain Nix (our own equivalents of
nixpkgs' cleanSource, sourceFilesBySuffices, sourceByRegex, fetchgit), the repositories that hold
them, and the ground truth the pattern tests check buildref against: what a store path holds
compared with a revision's tree, worked out with git and the file system only (no buildref code).
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from buildsets import salt
from helpers import Nix, git, nix_string

# -- the expressions

LIB_NIX = r"""# salt: @SALT@
rec {
  mk = { system, salt }: name: script: derivation {
    inherit name system salt;
    builder = "/bin/sh";
    args = [ "-c" script ];
  };
  hasSuffix = suffix: s: let n = builtins.stringLength s; k = builtins.stringLength suffix; in
    n >= k && builtins.substring (n - k) k s == suffix;
  removePrefix = prefix: s: let k = builtins.stringLength prefix; in
    if builtins.substring 0 k s == prefix then builtins.substring k (builtins.stringLength s - k) s else s;
  # nixpkgs' cleanSourceFilter: version control directories, editor files, result links, objects
  cleanSourceFilter = name: type: let base = baseNameOf (toString name); in !(
    (type == "directory" && (base == ".git" || base == ".svn" || base == "CVS" || base == ".hg"))
    || builtins.match "^\\.sw[a-z]$" base != null
    || builtins.match "^\\..*\\.sw[a-z]$" base != null
    || builtins.match ".*~$" base != null
    || (type == "symlink" && builtins.match "^result.*" base != null)
    || builtins.match ".*\\.o$" base != null
    || builtins.match ".*\\.so$" base != null
    || type == "unknown");
  # nixpkgs names every cleanSourceWith result "source"
  cleanSource = src: builtins.path { name = "source"; path = src; filter = cleanSourceFilter; };
  sourceFilesBySuffices = src: exts: builtins.path {
    name = "source"; path = src;
    filter = name: type:
      type == "directory" || builtins.any (ext: hasSuffix ext (baseNameOf (toString name))) exts;
  };
  sourceByRegex = src: regexes: builtins.path {
    name = "source"; path = src;
    filter = path: type: let rel = removePrefix (toString src + "/") (toString path); in
      builtins.any (re: builtins.match re rel != null) regexes;
  };
}
"""

FLAKE_NIX = r"""# salt: @SALT@
{
  inputs.sub = { url = "path:./sub"; flake = false; };
  outputs = { self, sub }:
    let
      lib = import ./nix/lib.nix;
      mk = lib.mk { system = "@SYSTEM@"; salt = "@SALT@"; };
      first = file: "read x < ${file}; echo $x > $out";
    in {
      packages."@SYSTEM@" = {
        self = mk "p-self" (first "${self}/data");
        dot = mk "p-dot" (first "${./.}/data");
        nixdir = import ./nix/package.nix { inherit mk first; };
        sub = mk "p-sub" (first "${./sub}/part.txt");
        named = mk "p-named" (first "${builtins.path { name = "app-src"; path = ./.; }}/data");
        pathinput = mk "p-pathinput" (first "${sub}/part.txt");
        clean = mk "p-clean" (first "${lib.cleanSource ./.}/data");
        nixonly = mk "p-nixonly" (first "${lib.sourceFilesBySuffices ./. [ ".nix" ]}/flake.nix");
        regex = mk "p-regex" (first "${lib.sourceByRegex ./. [ "data" "sub" "sub/.*" ]}/data");
        empty = mk "p-empty" "read x < ${./empty.txt}; echo empty $x > $out";
        license = mk "p-license" (first "${./LICENSE}");
      };
    };
}
"""

PACKAGE_NIX = r"""# salt: @SALT@
{ mk, first }: mk "p-nixdir" (first "${../.}/data")
"""

# Not a flake: what `nix-build` of a checkout does with ./. (the whole directory, .git included)
DEFAULT_NIX = r"""# salt: @SALT@
{ system ? builtins.currentSystem }:
let
  lib = import ./nix/lib.nix;
  mk = lib.mk { inherit system; salt = "@SALT@"; };
in {
  checkout = mk "p-checkout" "read x < ${./.}/data; echo $x > $out";
  cleaned = mk "p-cleaned" "read x < ${lib.cleanSource ./.}/data; echo $x > $out";
}
"""

LICENSE = "MIT License\n\nPermission is hereby granted, free of charge, to any person obtaining a copy\n"


def fill(template: str, system: str, s: str) -> str:
    return template.replace("@SYSTEM@", system).replace("@SALT@", s)


def fetchgit_like(system: str, repo: Path, rev: str, nar_hash: str, name: str) -> str:
    """A fetchgit-like fixed-output derivation: ``git archive`` of ``rev`` unpacked into $out,
    declared by its recursive sha256. The builder needs git and tar, so it gets a PATH."""
    script = f"mkdir $out && git -C {repo} archive {rev} | tar -x -C $out"
    return (f'derivation {{ name = {nix_string(name)}; system = {nix_string(system)}; builder = "/bin/sh";'
            f' PATH = "/usr/bin:/bin"; args = [ "-c" {nix_string(script)} ];'
            f' outputHashMode = "recursive"; outputHashAlgo = "sha256";'
            f' outputHash = {nix_string(nar_hash)}; }}')


def mk_nix(system: str, s: str) -> str:
    """A Nix function ``mk name script`` for expressions written by a test."""
    return (f'(name: script: derivation {{ inherit name; system = {nix_string(system)}; builder = "/bin/sh";'
            f' salt = {nix_string(s)}; args = [ "-c" script ]; }})')


# -- the repositories


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def init(path: Path) -> Path:
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    return path


def app_repo(path: Path, system: str, nix: Nix) -> dict[str, str]:
    """The application: a flake with one package per pattern, three commits (every one changes
    every file a pattern reads), tags v1 (light), v2 (annotated), v3; a tag ``rel`` on v1 and a
    branch ``rel`` on v2; ``docs/`` holds only export-ignore'd files (git archive leaves it empty);
    LICENSE and empty.txt never change. Returns the commits by tag."""
    init(path)
    (path / "nix").mkdir()
    (path / "sub").mkdir()
    (path / "docs").mkdir()
    (path / ".gitattributes").write_text("docs/** export-ignore\n")
    (path / ".gitignore").write_text("build/\n*.o\n")
    (path / "LICENSE").write_text(LICENSE)
    (path / "empty.txt").write_text("")
    revs: dict[str, str] = {}
    for tag in ("v1", "v2", "v3"):
        s = salt()
        (path / "flake.nix").write_text(fill(FLAKE_NIX, system, s))
        (path / "default.nix").write_text(fill(DEFAULT_NIX, system, s))
        (path / "nix" / "lib.nix").write_text(fill(LIB_NIX, system, s))
        (path / "nix" / "package.nix").write_text(fill(PACKAGE_NIX, system, s))
        (path / "data").write_text(f"data {tag} {s}\n")
        (path / "sub" / "part.txt").write_text(f"part {tag} {s}\n")
        (path / "docs" / "notes.md").write_text(f"notes {tag} {s}\n")
        git(path, "add", "-A")
        # The path:./sub input is locked by narHash alone. Nix 2.8 copies ./sub (of the work tree)
        # into the store when it locks, and later only ever finds it there by that hash: a locked
        # relative path "cannot be fetched". `nix flake lock` keeps a stale narHash when sub/
        # changes, so lock afresh for every commit, as a project must.
        (path / "flake.lock").unlink(missing_ok=True)
        nix.run("nix", "flake", "lock", str(path))
        revs[tag] = commit(path, tag)
        if tag == "v2":
            git(path, "-c", "user.name=t", "-c", "user.email=t@t", "tag", "-a", tag, "-m", tag)
        else:
            git(path, "tag", tag)
    git(path, "tag", "rel", revs["v1"])
    git(path, "branch", "rel", revs["v2"])
    return revs


# -- ground truth: git and the file system, nothing of buildref's


Entry = tuple[str, str]  # (git mode, blob id)


def blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def store_files(path: Path) -> dict[str, Entry]:
    """Every file and symlink under ``path`` ("" for a lone file), as git would store it; regular
    files hashed by ``git hash-object`` itself."""
    entries: dict[str, tuple[str, Path | None, str]] = {}  # rel -> (mode, file to hash, or link blob)

    def add(rel: str, full: Path) -> None:
        if full.is_symlink():
            entries[rel] = ("120000", None, blob_id(os.fsencode(os.readlink(full))))
        else:
            entries[rel] = ("100755" if os.access(full, os.X_OK) else "100644", full, "")

    if path.is_symlink() or path.is_file():
        add("", path)
    else:
        for root, dirs, files in os.walk(path):
            for name in [*files, *(d for d in dirs if (Path(root) / d).is_symlink())]:
                full = Path(root) / name
                add(str(full.relative_to(path)), full)
    to_hash = [full for _, full, _ in entries.values() if full is not None]
    hashed = subprocess.run(["git", "hash-object", "--no-filters", "--stdin-paths"], capture_output=True,
                            check=True, input="".join(f"{p}\n" for p in to_hash).encode()).stdout.split()
    ids = iter(oid.decode() for oid in hashed)
    return {rel: (mode, next(ids) if full is not None else oid) for rel, (mode, full, oid) in entries.items()}


def _strip(rel: str, subdir: str | None) -> str | None:
    if subdir is None:
        return rel
    if rel == subdir:
        return ""
    return rel[len(subdir) + 1:] if rel.startswith(subdir + "/") else None


def revision_files(repo: Path, rev: str, subdir: str | None = None, rule: str = "raw") -> dict[str, Entry]:
    """The files of ``rev`` (or of one directory or file in it): ``raw`` as committed (``git
    ls-tree``; gitlinks hold no files), ``export-ignore`` as ``git archive`` writes them."""
    spec = [subdir] if subdir is not None else []
    found: dict[str, Entry] = {}
    if rule == "raw":
        out = subprocess.run(["git", "-C", str(repo), "ls-tree", "-r", "-z", "--full-tree", rev, "--", *spec],
                             capture_output=True, check=True).stdout.decode()
        for line in filter(None, out.split("\0")):
            meta, rel = line.split("\t", 1)
            mode, kind, oid = meta.split()
            short = _strip(rel, subdir)
            if kind == "blob" and short is not None:
                found[short] = (mode, oid)
        return found
    assert rule == "export-ignore", rule
    tar = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", rev, *spec],
                         capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        for member in archive:
            short = _strip(member.name.rstrip("/"), subdir)
            if short is None:
                continue
            if member.issym():
                found[short] = ("120000", blob_id(os.fsencode(member.linkname)))
            elif member.isfile():
                data = archive.extractfile(member)
                assert data is not None
                found[short] = ("100755" if member.mode & 0o100 else "100644", blob_id(data.read()))
    return found


@dataclass(frozen=True)
class Comparison:
    """A source against a revision, file by file: ``exact`` (the same files), ``subset`` (only
    files of the revision, some left out), ``superset`` (every file of the revision, and more),
    ``different`` (a file differs, or some are missing and others extra)."""

    kind: str
    agreeing: int  # files at the same path with the same mode and blob
    source_total: int
    revision_total: int
    extra: tuple[str, ...]  # in the source only
    missing: tuple[str, ...]  # in the revision only
    differing: tuple[str, ...]


def compare(source: Path, repo: Path, rev: str, subdir: str | None = None, rule: str = "raw") -> Comparison:
    have = store_files(source)
    want = revision_files(repo, rev, subdir, rule)
    extra = tuple(sorted(set(have) - set(want)))
    missing = tuple(sorted(set(want) - set(have)))
    differing = tuple(sorted(p for p in set(have) & set(want) if have[p] != want[p]))
    agreeing = len(set(have) & set(want)) - len(differing)
    if differing or (extra and missing):
        kind = "different"
    elif extra:
        kind = "superset"
    elif missing:
        kind = "subset"
    else:
        kind = "exact"
    return Comparison(kind, agreeing, len(have), len(want), extra, missing, differing)


def nar_hash(nix: Nix, path: str) -> str:
    """The NAR hash Nix recorded for a store path, in SRI form."""
    nix32 = nix.run("nix-store", "--query", "--hash", path).decode().strip()
    return nix.run("nix", "hash", "to-sri", nix32).decode().strip()


def refs_at(repo: Path, rev: str) -> set[str]:
    """The refs that point at ``rev`` now (annotated tags peeled), HEAD included, as git says."""
    refs = set(git(repo, "for-each-ref", "--points-at", rev, "--format=%(refname)").split())
    if git(repo, "rev-parse", "HEAD") == rev:
        refs.add("HEAD")
    return refs
