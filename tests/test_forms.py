"""Forms: the git id of what Nix copied, computed from git objects (every directory of a commit,
under both rules, tree objects only) and from a store copy (the file system). Proven against what
the real Nix copies: `builtins.fetchGit` (export-ignore) and its subdirectories, and checkouts
(raw), on random repositories with every kind of entry."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pygit2
import pytest

from bigrepo import many_directories
from buildref.git.forms import EMPTY_TREE, TreeForms, path_form, tree_id
from buildref.git.source import GitRepository
from buildref.git.tree_nar import TreeRule
from buildref.query.lookup import unseen_forms
from gitrepos import RandomRepo
from helpers import Nix, git, nix_string

SEEDS = range(6)


def _fetched(nix: Nix, repo: Path, revs: list[str]) -> list[str]:
    items = " ".join(nix_string(r) for r in revs)
    paths = nix.eval_json(f"map (rev: (builtins.fetchGit {{ url = {nix_string(str(repo))}; inherit rev; }})"
                          f".outPath) [ {items} ]")
    assert isinstance(paths, list)
    return [str(p) for p in paths]


def _store_dirs(root: str) -> dict[str, str]:
    """Every directory below ``root`` (relative path -> absolute), root included as ""."""
    found = {"": root}
    for directory, subdirs, _ in os.walk(root):
        for name in subdirs:
            path = os.path.join(directory, name)
            if not os.path.islink(path):  # os.walk lists a symlink to a directory as one
                found[os.path.relpath(path, root)] = path
    return found


@pytest.mark.parametrize("seed", SEEDS)
def test_forms_of_every_directory_equal_what_fetchgit_copied(nix: Nix, tmp_path: Path, seed: int) -> None:
    repo = RandomRepo(tmp_path / "repo", seed)
    revs = repo.build(3)
    source = GitRepository(str(repo.path))
    forms = TreeForms(source.trees)
    for rev, out in zip(revs, _fetched(nix, repo.path, revs), strict=True):
        commit = source.resolve(rev)
        tree, data = commit.tree_id.raw, source.commit_data(commit)
        listed = {d.subdir: d.form for d in forms.directories(tree, TreeRule.EXPORT_IGNORE, data)}
        on_disk = {rel: path for rel, path in _store_dirs(out).items()
                   if rel == "" or rel.isascii()}  # listing keys are decoded names
        # the same directories (but submodules, empty in Nix's copy, which are not git trees, and
        # directories whose bytes git archive makes from more than the commit, which have no form)
        # and each one's form is what Nix has on disk, rewritten files (eol, ident, export-subst)
        # included
        assert not set(listed) - set(_store_dirs(out))
        for rel, path in on_disk.items():
            if rel not in listed:
                unknown = not forms.form(tree, TreeRule.EXPORT_IGNORE, commit=data).known
                assert unknown or os.listdir(path) == [], (rev, rel)
                continue
            assert listed[rel].oid == path_form(path).oid, (rev, rel)
            assert listed[rel].files == path_form(path).files, (rev, rel)


def _committed_tree(repo: Path, rev: str, target: Path) -> None:
    """The tree as committed, written by git's own commands (a checkout would apply eol and ident
    attributes): every blob as it is, submodules as empty directories."""
    listing = subprocess.run(["git", "-C", str(repo), "ls-tree", "-r", "-t", "-z", rev], capture_output=True,
                             check=True).stdout
    target.mkdir()
    for line in listing.split(b"\0"):
        if not line:
            continue
        meta, name = line.split(b"\t", 1)
        mode, kind, oid = meta.split()
        path = os.path.join(os.fsencode(target), name)
        if kind in (b"tree", b"commit"):
            os.makedirs(path, exist_ok=True)
            continue
        data = subprocess.run(["git", "-C", str(repo), "cat-file", "blob", oid], capture_output=True,
                              check=True).stdout
        if mode == b"120000":
            os.symlink(data, path)
        else:
            with open(path, "wb") as f:
                f.write(data)
            os.chmod(path, 0o755 if mode == b"100755" else 0o644)


@pytest.mark.parametrize("seed", SEEDS)
def test_raw_forms_equal_checkouts(tmp_path: Path, seed: int) -> None:
    repo = RandomRepo(tmp_path / "repo", seed + 50)
    revs = repo.build(3)
    source = GitRepository(str(repo.path))
    forms = TreeForms(source.trees)
    for i, rev in enumerate(revs):
        checkout = tmp_path / f"checkout{i}"
        _committed_tree(repo.path, rev, checkout)
        tree = source.resolve(rev).tree_id.raw
        listed = {d.subdir: d.form for d in forms.directories(tree, TreeRule.RAW)}
        for rel, path in _store_dirs(str(checkout)).items():
            if rel in listed:
                assert listed[rel] == path_form(path), (rev, rel)
            elif rel.isascii():
                assert os.listdir(path) == [], (rev, rel)  # a submodule
        # without submodules (empty directories in Nix's copy) the raw form is git's own tree
        if not repo.gitlinks:
            assert listed[""].oid == tree


def test_tree_ids_are_gits(tmp_path: Path) -> None:
    """The tree objects formed here hash exactly as git's own (modes, names, git's order)."""
    repo = RandomRepo(tmp_path / "repo", 7, export_ignore=False)
    rev = repo.build(2)[-1]
    git_repo = pygit2.Repository(str(repo.path))
    stack = [git_repo[rev].peel(pygit2.Commit).tree]
    checked = 0
    while stack:
        tree = stack.pop()
        if any(e.filemode == 0o160000 for e in tree):
            continue
        items = [(f"{e.filemode:o}".encode(), os.fsencode(e.name), e.id.raw) for e in tree]
        assert tree_id(items) == tree.id.raw
        checked += 1
        stack.extend(git_repo[e.id] for e in tree if e.type_str == "tree")
    assert checked > 3
    empty = git(repo.path, "hash-object", "-t", "tree", "/dev/null")
    assert tree_id([]) == EMPTY_TREE == bytes.fromhex(empty)


def test_trivial_content_is_not_identifying(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "empty-file").write_text("")
    licence = tmp_path / "licence"
    licence.mkdir()
    (licence / "LICENSE").write_text("Apache License\nVersion 2.0, January 2004\n" * 50)
    (licence / "COPYING").write_text("GNU GENERAL PUBLIC LICENSE\n")
    keep = tmp_path / "keep"
    (keep / "a").mkdir(parents=True)
    (keep / "a" / ".gitkeep").write_text("")
    (keep / "b.txt").write_text("")
    own = tmp_path / "own"
    own.mkdir()
    (own / "part.txt").write_text("part 3f9a1c\n")
    for path in (empty, tmp_path / "empty-file", licence, keep):
        assert not path_form(str(path)).identifying, path
    assert path_form(str(own)).identifying and path_form(str(own)).files == 1
    assert path_form(str(empty)).oid == EMPTY_TREE


@pytest.mark.parametrize("seed", SEEDS)
def test_forms_beyond_those_seen_are_all_of_a_revisions_new_ones(tmp_path: Path, seed: int) -> None:
    """A lookup walking back from a tip asks each ancestor only for the identifying forms not seen
    yet, entering no directory whose form was seen: exactly what listing every directory gives."""
    repo = RandomRepo(tmp_path / "repo", seed + 100)
    revs = repo.build(5)
    walked, full = GitRepository(str(repo.path)), GitRepository(str(repo.path))

    def identifying(source: GitRepository, rev: str, beyond: set[bytes]) -> set[bytes]:
        commit = source.resolve(rev)
        tree, data = commit.tree_id.raw, source.commit_data(commit)
        return {d.form.oid for rule in TreeRule
                for d in source.forms.directories(tree, rule, data, beyond=beyond) if d.form.identifying}

    seen = identifying(walked, revs[-1], set())
    assert seen
    entered_all = walked.forms.trees_read
    for rev in reversed(revs[:-1]):
        before = walked.forms.trees_read
        new = unseen_forms(walked, rev, seen)
        assert new == identifying(full, rev, set()) - seen, rev
        assert walked.forms.trees_read - before <= entered_all  # never more than a whole listing
        seen |= new


def test_an_ancestor_changing_one_file_costs_its_changed_directories(tmp_path: Path) -> None:
    many_directories(tmp_path / "wide", 2_000, commits=3)
    source = GitRepository(str(tmp_path / "wide"))
    tip, parent = (source.resolve(f"main~{n}") for n in (0, 1))
    seen = {d.form.oid for rule in TreeRule
            for d in source.forms.directories(tip.tree_id.raw, rule, source.commit_data(tip))
            if d.form.identifying}
    assert len(seen) == 2_000 + 20 + 1  # both rules: equal contents, equal forms
    before = source.forms.trees_read
    new = unseen_forms(source, str(parent.id), seen)
    # the root changed ("top"); every directory below it is one the tip had: under each rule at
    # most the root and its 20 directories are read, none deeper
    assert len(new) == 1
    assert source.forms.trees_read - before <= 2 * 21 < before / 50
