"""`buildref hash REPO` against real `builtins.fetchGit` on random repositories."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from buildref.errors import BadStorePath
from buildref.git.source import GitRepository
from buildref.git.tree_nar import BlobRef, Fragment, TreeNarCache, TreeRule
from buildref.nix.storepath import check_name
from gitrepos import RandomRepo, read_nar, read_tree, tracked_dirs
from helpers import Nix, assert_error_line, buildref, buildref_json, git, nix_string

SEEDS = range(8)


def _fetch_all(nix: Nix, repo: Path, revs: list[str]) -> list[dict[str, object]]:
    items = " ".join(nix_string(r) for r in revs)
    expr = f"""map (rev: let s = builtins.fetchGit {{ url = {nix_string(str(repo))}; inherit rev; }};
      in {{ inherit (s) narHash rev lastModified revCount; path = s.outPath; }}) [ {items} ]"""
    result = nix.eval_json(expr)
    assert isinstance(result, list)
    return result


def _valid_name(name: str) -> bool:
    try:
        check_name(name)
    except BadStorePath:
        return False
    return True


@pytest.mark.parametrize("seed", SEEDS)
def test_every_revision_matches_fetchgit(nix: Nix, tmp_path: Path, seed: int) -> None:
    repo = RandomRepo(tmp_path / "repo", seed)
    revs = repo.build(4)
    expected = _fetch_all(nix, repo.path, revs)
    for rev, want in zip(revs, expected, strict=True):
        got = buildref_json("hash", str(repo.path), "--rev", rev)
        assert set(got) == {"rev", "narHash", "storePath", "lastModified", "revCount", "narSize", "rule"}
        assert got["rev"] == want["rev"] == rev
        assert got["narHash"] == want["narHash"]
        assert got["storePath"] == want["path"]
        assert got["lastModified"] == want["lastModified"]
        assert got["revCount"] == want["revCount"]


@pytest.mark.parametrize("seed", SEEDS)
def test_subdirectories_match_nix_copies(nix: Nix, tmp_path: Path, seed: int) -> None:
    repo = RandomRepo(tmp_path / "repo", seed + 100)
    revs = repo.build(3)
    source = GitRepository(str(repo.path))
    checked = 0
    for rev in revs[-2:]:
        subdirs = [d for d in tracked_dirs(repo, rev) if d.isascii()]
        fetch = f"builtins.fetchGit {{ url = {nix_string(str(repo.path))}; rev = {nix_string(rev)}; }}"
        listing = " ".join(nix_string(d) for d in subdirs)
        exists = nix.eval_json(
            f'let s = {fetch}; in map (d: builtins.pathExists "${{s}}/${{d}}") [ {listing} ]'
        )
        assert isinstance(exists, list)
        copyable = [d for d, e in zip(subdirs, exists, strict=True)
                    if e and _valid_name(d.rsplit("/", 1)[-1])]
        for subdir, present in zip(subdirs, exists, strict=True):
            if not present:  # left out by export-ignore: Nix does not have it, and buildref says why
                proc = buildref("hash", str(repo.path), "--rev", rev, "--subdir", subdir, check=False)
                assert_error_line(proc, "export-ignore")
            elif subdir not in copyable:
                proc = buildref("hash", str(repo.path), "--rev", rev, "--subdir", subdir, check=False)
                assert_error_line(proc, "illegal character")
        if not copyable:
            continue
        copied = nix.eval_json(
            f"let s = {fetch}; in map (d: let p = /. + (builtins.unsafeDiscardStringContext "
            f'"${{s}}/${{d}}"); in "${{p}}") [ {" ".join(nix_string(d) for d in copyable)} ]'
        )
        assert isinstance(copied, list)
        nar_hashes = nix.run("nix", "hash", "path", *copied).decode().split()
        for subdir, store_path, nar_hash in zip(copyable, copied, nar_hashes, strict=True):
            got = source.source(rev, subdir)
            assert (got.store_path, got.nar_hash.sri) == (store_path, nar_hash), subdir
            checked += 1
        cli = buildref_json("hash", str(repo.path), "--rev", rev, "--subdir", copyable[0])
        assert (cli["storePath"], cli["narHash"]) == (copied[0], nar_hashes[0])
    assert checked > 0


@pytest.mark.parametrize("seed", range(4))
def test_raw_rule_is_the_committed_tree(nix: Nix, tmp_path: Path, seed: int) -> None:
    """Flake inputs on Nix >= 2.20 ignore export-ignore and every rewrite: the NAR of the tree as
    committed (checked out here with git's conversions switched off by info/attributes)."""
    repo = RandomRepo(tmp_path / "repo", seed + 200)
    revs = repo.build(3)
    no_conversions = "* -text -ident !eol !crlf !working-tree-encoding\n"
    (repo.path / ".git" / "info" / "attributes").write_text(no_conversions)
    for i, rev in enumerate(revs):
        checkout = tmp_path / f"checkout{i}"
        git(repo.path, "worktree", "add", "-q", "--detach", str(checkout), rev)
        (checkout / ".git").unlink()
        want = nix.run("nix", "hash", "path", str(checkout)).decode().strip()
        got = buildref_json("hash", str(repo.path), "--rev", rev, "--rule", "raw")
        assert got["narHash"] == want
        assert got["rule"] == "raw"


def test_export_ignore_variants_differ_only_when_asked(tmp_path: Path) -> None:
    repo = RandomRepo(tmp_path / "plain", 7, export_ignore=False)
    rev = repo.build(2)[-1]
    source = GitRepository(str(repo.path))
    assert source.source(rev, rule=TreeRule.RAW).nar_hash == source.source(rev).nar_hash
    repo.write(b".gitattributes", b"*.log export-ignore\n")
    repo.write(b"drop.log", b"x")
    rev = repo.commit()
    source = GitRepository(str(repo.path))
    assert source.source(rev, rule=TreeRule.RAW).nar_hash != source.source(rev).nar_hash


def test_next_commit_rereads_only_what_changed(nix: Nix, tmp_path: Path) -> None:
    path = tmp_path / "wide"
    repo = RandomRepo(path, 1, export_ignore=False)
    for d in range(20):
        for f in range(50):
            repo.write(f"dir{d}/sub/file{f}".encode(), os.urandom(64))
    first = repo.commit()
    repo.write(b"dir7/sub/file3", b"changed")
    second = repo.commit()

    source = GitRepository(str(path))
    source.source(first)
    before = source.trees.trees_read
    assert before == 1 + 20 * 2
    info = source.source(second)
    assert source.trees.trees_read - before == 3  # the root, dir7 and dir7/sub
    fresh = GitRepository(str(path)).source(second)
    assert info.nar_hash == fresh.nar_hash
    assert info.nar_hash.sri == _fetch_all(nix, path, [second])[0]["narHash"]


def test_revision_names_resolve_like_git(tmp_path: Path) -> None:
    repo = RandomRepo(tmp_path / "repo", 3, export_ignore=False)
    revs = repo.build(3)
    repo.git("tag", "v1", revs[0])
    path = str(repo.path)
    assert buildref_json("hash", path)["rev"] == revs[-1]
    assert buildref_json("hash", path, "--rev", "main~1")["rev"] == revs[1]
    assert buildref_json("hash", path, "--rev", "v1")["rev"] == revs[0]
    assert buildref_json("hash", path, "--rev", revs[1][:10])["revCount"] == 2


def test_bad_repositories_and_revisions_are_one_line_errors(tmp_path: Path) -> None:
    repo = RandomRepo(tmp_path / "repo", 5, export_ignore=False)
    repo.build(1)
    assert_error_line(buildref("hash", str(repo.path), "--rev", "no-such-rev", check=False),
                      "unknown revision 'no-such-rev'")
    assert_error_line(buildref("hash", str(repo.path), "--rev", "0" * 40, check=False), "unknown revision")
    assert_error_line(buildref("hash", str(tmp_path / "nothing"), check=False), "not a git repository")
    assert_error_line(buildref("hash", str(repo.path), "--subdir", "no/such/dir", check=False),
                      "does not exist")
    assert_error_line(buildref("hash", str(repo.path), "--subdir", "../up", check=False), "leaves")
    subprocess.run(["git", "-C", str(repo.path), "checkout", "-q", "--orphan", "empty"], check=True)
    assert_error_line(buildref("hash", str(repo.path), check=False), "unknown revision 'HEAD'")


def _blob_refs(fragment: Fragment) -> int:
    count, stack = 0, [fragment]
    while stack:
        for part in stack.pop().parts:
            if isinstance(part, BlobRef):
                count += 1
            elif isinstance(part, Fragment):
                stack.append(part)
    return count


def test_memory_budget_changes_memory_not_hashes(nix: Nix, tmp_path: Path) -> None:
    """Large files, and every file once the budget is spent, are streamed from git when hashing."""
    repo = RandomRepo(tmp_path / "repo", 21)
    repo.write(b"big.bin", os.urandom(TreeNarCache.INLINE_MAX + 1))
    revs = repo.build(2)
    want = [r["narHash"] for r in _fetch_all(nix, repo.path, revs)]
    default = GitRepository(str(repo.path))
    streamed = GitRepository(str(repo.path))
    streamed.trees.max_bytes = 0
    for rev, nar_hash in zip(revs, want, strict=True):
        assert default.source(rev).nar_hash.sri == nar_hash
        assert streamed.source(rev).nar_hash.sri == nar_hash
    commit = streamed.resolve(revs[-1])
    tree, data = commit.tree_id.raw, streamed.commit_data(commit)
    files = int(repo.git("ls-tree", "-r", "--name-only", revs[-1], "--", ".").count("\n")) + 1
    assert _blob_refs(streamed.trees.fragment(tree, TreeRule.EXPORT_IGNORE, commit=data)) >= files // 2
    assert _blob_refs(default.trees.fragment(tree, TreeRule.EXPORT_IGNORE, commit=data)) >= 1  # big.bin


@pytest.mark.parametrize("seed", range(3))
def test_fetchgit_applies_the_rewrites(nix: Nix, tmp_path: Path, seed: int) -> None:
    """What Nix puts in the store is git archive's output, rewrites included, and buildref has it
    byte for byte: files whose bytes differ from their blobs are there to compare."""
    repo = RandomRepo(tmp_path / "repo", seed + 400)
    revs = repo.build(3)
    fetched = _fetch_all(nix, repo.path, revs)
    source = GitRepository(str(repo.path))
    rewritten = 0
    for rev, want in zip(revs, fetched, strict=True):
        store = read_tree(Path(str(want["path"])))
        commit = source.resolve(rev)
        ours = read_nar(b"".join(source.trees.dump(source.trees.fragment(
            commit.tree_id.raw, TreeRule.EXPORT_IGNORE, commit=source.commit_data(commit)))))
        raw = read_nar(b"".join(source.trees.dump(source.trees.fragment(commit.tree_id.raw, TreeRule.RAW))))
        assert ours == store
        rewritten += sum(1 for path, node in store.items() if node[0] != "dir" and raw[path] != node)
        assert source.source(rev).nar_hash.sri == want["narHash"]
    assert rewritten > 0


def _subst_repo(path: Path) -> RandomRepo:
    repo = RandomRepo(path, 1, export_ignore=False)
    repo.write(b".gitattributes", b"*.txt export-subst\n*.bat eol=crlf\n")
    for d in range(20):
        for f in range(10):
            repo.write(f"dir{d}/sub/file{f}.c".encode(), os.urandom(64))
    repo.write(b"dir3/sub/version.txt", b"$Format:%H %cI$\n")
    repo.write(b"dir5/run.bat", b"echo\n")
    return repo


def test_export_subst_subtrees_serve_one_commit(nix: Nix, tmp_path: Path) -> None:
    """Two commits of the same tree: the subtree holding the expanded file differs between them,
    the rest is shared, and each hash is Nix's."""
    repo = _subst_repo(tmp_path / "repo")
    first = repo.commit()
    second = repo.commit()  # --allow-empty: the very same tree
    source = GitRepository(str(repo.path))
    a = source.source(first)
    before = source.trees.trees_read
    b = source.source(second)
    assert source.trees.trees_read - before == 3  # the root, dir3 and dir3/sub: nothing else
    assert a.nar_hash != b.nar_hash
    assert source.source(first).nar_hash == a.nar_hash  # a later pass over the first commit agrees
    want = _fetch_all(nix, repo.path, [first, second])
    assert [a.nar_hash.sri, b.nar_hash.sri] == [w["narHash"] for w in want]


def test_rewrites_keep_the_memo(tmp_path: Path) -> None:
    """With rewriting attributes, the next commit still rereads only the trees that changed (and
    those holding expanded placeholders)."""
    repo = _subst_repo(tmp_path / "repo")
    first = repo.commit()
    repo.write(b"dir7/sub/file3.c", b"changed")
    second = repo.commit()
    source = GitRepository(str(repo.path))
    source.source(first)
    before = source.trees.trees_read
    info = source.source(second)
    assert source.trees.trees_read - before == 5  # the root, dir7, dir7/sub, dir3, dir3/sub
    assert info.nar_hash == GitRepository(str(repo.path)).source(second).nar_hash
