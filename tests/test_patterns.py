"""The ways real projects bring git sources into a Nix build, each built by the real Nix through
buildref's hook into a real service, then asked about with ``buildref lookup/why --json``.

Every test first proves what Nix did (the ground truth: the input source's NAR hash against the
revision's, or its files against the revision's, with git and Nix alone), then checks that buildref
names that revision — under the right ``match`` label — and no other. The contract is
/work/notes/matching-contract.md; the facts each test proves feed the README's matching table.

One service and one set of repositories serve every test but one (a user's copy of a repository
would be a second answer to every other test's ``why``): each test builds its own salted
derivations, and its assertions are about those alone.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from buildsets import salt
from helpers import Nix, git
from patterns import (
    Comparison,
    app_repo,
    blob_id,
    commit,
    compare,
    fetchgit_like,
    init,
    mk_nix,
    nar_hash,
    refs_at,
    revision_files,
    store_files,
)
from servicectl import ServiceProcess, nix_build_json, wait_for

RULES = ("export-ignore", "raw")
# Nix's fetchGit runs `git submodule update` on file:// URLs, which git >= 2.38 refuses by default
ALLOW_FILE_SUBMODULES = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "protocol.file.allow",
                         "GIT_CONFIG_VALUE_0": "always"}


def run_cli(svc: ServiceProcess, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "buildref", *args, "--socket", str(svc.query_socket)],
                          capture_output=True, check=False)


def cli_json(svc: ServiceProcess, *args: str) -> Any:
    proc = run_cli(svc, *args, "--json")
    assert proc.returncode == 0, f"buildref {' '.join(args)}: {proc.stderr.decode(errors='replace')}"
    return json.loads(proc.stdout)


def buildref_hash(repo: Path, rev: str, subdir: str | None = None, rule: str = "export-ignore") -> str:
    """The narHash ``buildref hash`` gives (proven against builtins.fetchGit in test_git_source)."""
    argv = [sys.executable, "-m", "buildref", "hash", str(repo), "--rev", rev, "--rule", rule, "--json"]
    if subdir is not None:
        argv += ["--subdir", subdir]
    proc = subprocess.run(argv, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    value: str = json.loads(proc.stdout)["narHash"]
    return value


def wait_recorded(svc: ServiceProcess, repo: str, ref: str | None = None) -> None:
    """Until the service has recorded ``repo`` (and ``ref`` in it)."""
    def recorded() -> bool:
        try:
            moves = svc.call("refs", {"repo": repo})
        except (AssertionError, OSError):
            return False
        return ref is None or any(m["ref"] == ref for m in moves)
    wait_for(recorded, what=f"{repo} {ref or ''} recorded")


@dataclass
class World:
    base: Path
    nix: Nix
    system: str
    svc: ServiceProcess
    app: Path
    revs: dict[str, str]  # app's commits by tag: v1 v2 v3
    repos: dict[str, Path] = field(default_factory=dict)  # every configured repository by name
    other: dict[str, str] = field(default_factory=dict)  # d1 d2 (dep), l1 l2 (lib), s1 (super), c1

    @property
    def env(self) -> dict[str, str]:
        return {**self.svc.nix_env(self.nix.env), **ALLOW_FILE_SUBMODULES}

    def json(self, *args: str) -> Any:
        return cli_json(self.svc, *args)

    def build(self, *args: str) -> dict[str, dict[str, Any]]:
        """``nix build`` through the hook, then wait until the service has indexed it; the
        results by derivation name."""
        built = nix_build_json(self.env, *args)
        self.svc.wait_idle()
        by_name = {b["drvPath"].split("-", 1)[1].removesuffix(".drv"): b for b in built}
        assert len(by_name) == len(built), built
        return by_name

    def build_expr(self, text: str, *attrs: str) -> dict[str, dict[str, Any]]:
        path = self.base / f"expr-{salt()}.nix"
        path.write_text(text)
        return self.build("-f", str(path), *attrs)

    def input_srcs(self, drv: str) -> list[str]:
        shown = json.loads(self.nix.run("nix", "show-derivation", drv))
        srcs: list[str] = shown[drv]["inputSrcs"]
        return srcs

    def only_src(self, built: dict[str, Any]) -> str:
        srcs = self.input_srcs(built["drvPath"])
        assert len(srcs) == 1, srcs
        return srcs[0]

    def fetch_git(self, rev: str, **extra: str) -> str:
        """A ``builtins.fetchGit`` of the app repository, as Nix text."""
        args = "".join(f" {k} = {json.dumps(v)};" for k, v in extra.items())
        return f'builtins.fetchGit {{ url = "{self.app}"; rev = "{rev}";{args} }}'


@pytest.fixture(scope="module")
def world(nix: Nix, system: str) -> Iterator[World]:
    # Readable by every user: one test has `nobody` copy the repository
    base = Path(tempfile.mkdtemp(prefix="brp", dir="/tmp"))
    base.chmod(0o755)
    svc: ServiceProcess | None = None
    try:
        app = base / "app"
        revs = app_repo(app, system, nix)
        other: dict[str, str] = {}

        # consumer pins dep's d1 in its flake.lock; dep moves on to d2 before the service starts,
        # so the service never sees d1 as a tip
        dep = init(base / "dep")
        (dep / "lib.txt").write_text(f"dep one {salt()}\n")
        other["d1"] = commit(dep, "d1")
        consumer = init(base / "consumer")
        (consumer / "flake.nix").write_text(f"""{{
  inputs.dep = {{ url = "git+file://{dep}"; flake = false; }};
  outputs = {{ self, dep }}: {{
    packages."{system}".default =
      {mk_nix(system, salt())} "consumer" "read x < ${{dep}}/lib.txt; echo $x > $out";
  }};
}}
""")
        git(consumer, "add", "-A")
        nix.run("nix", "flake", "lock", str(consumer))
        other["c1"] = commit(consumer, "pin dep")
        (dep / "lib.txt").write_text(f"dep two {salt()}\n")
        other["d2"] = commit(dep, "d2")

        # lib and a superproject that has it as a submodule at l1 (lib's tip is l2)
        lib = init(base / "lib")
        (lib / "include").mkdir()
        (lib / "include" / "lib.h").write_text(f"/* lib {salt()} */\n")
        (lib / "lib.txt").write_text(f"lib one {salt()}\n")
        other["l1"] = commit(lib, "l1")
        (lib / "lib.txt").write_text(f"lib two {salt()}\n")
        other["l2"] = commit(lib, "l2")
        superproject = init(base / "super")
        (superproject / "top.txt").write_text(f"super {salt()}\n")
        subprocess.run(["git", "-C", str(superproject), "-c", "protocol.file.allow=always", "submodule",
                        "add", "-q", str(lib), "vendor/lib"], check=True, capture_output=True)
        git(superproject / "vendor" / "lib", "checkout", "-q", other["l1"])
        other["s1"] = commit(superproject, "s1")

        repos = {"app": app, "dep": dep, "consumer": consumer, "lib": lib, "super": superproject}
        svc = ServiceProcess(repository=[{"name": n, "path": str(p)} for n, p in repos.items()])
        svc.start()
        for name in repos:
            wait_recorded(svc, name)
        yield World(base, nix, system, svc, app, revs, repos, other)
    finally:
        if svc is not None:
            svc.close()
        shutil.rmtree(base, ignore_errors=True)


# -- what the answers must say


def claims(world: World, repo: str, rev: str, drv: str) -> dict[str, Any] | None:
    """The build of ``drv`` as ``lookup repo rev`` lists it for that revision itself (not through a
    fallback to an ancestor), or None."""
    result = world.json("lookup", repo, rev)
    if result["fallback"] is not None:
        return None
    return next((b for b in result["builds"] if b["drvPath"] == drv), None)


def assert_no_other_claims(world: World, repo: str, rev: str, drv: str,
                           others: list[str] | None = None) -> None:
    revs = list(world.revs.values()) if repo == "app" else [v for v in world.other.values()
                                                             if _in_repo(world.repos[repo], v)]
    for other in [*revs, *(others or [])]:
        if other != rev:
            assert claims(world, repo, other, drv) is None, f"{repo} {other} claims {drv} (built from {rev})"


def _in_repo(repo: Path, rev: str) -> bool:
    return subprocess.run(["git", "-C", str(repo), "cat-file", "-e", f"{rev}^{{commit}}"],
                          capture_output=True, check=False).returncode == 0


def project(entry: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    return {k: entry.get(k, "<missing>") for k in expected}


def exact_rules(world: World, repo: str, rev: str, subdir: str | None, narhash: str) -> list[str]:
    """Ground truth: the rules under which the revision (or its directory) has exactly this NAR."""
    rules = [r for r in RULES if buildref_hash(world.repos[repo], rev, subdir, r) == narhash]
    assert rules, f"{narhash} is not {repo} {rev} {subdir or ''} under any rule"
    return rules


def assert_exact(world: World, built: dict[str, Any], rev: str, src: str, subdir: str | None = None,
                 repo: str = "app", others: list[str] | None = None) -> list[str]:
    """``src`` (the store path the build used) is exactly ``rev``'s tree (or ``subdir`` of it):
    proven here, then lookup and why must say so and name no other revision. The rules returned."""
    narhash = nar_hash(world.nix, src)
    rules = exact_rules(world, repo, rev, subdir, narhash)
    drv, out = built["drvPath"], built["outputs"]["out"]

    looked = world.json("lookup", repo, rev)
    assert looked["rev"] == rev and looked["fallback"] is None
    mine = [b for b in looked["builds"] if b["drvPath"] == drv]
    assert [(b["distance"], b["outputs"], b["valid"]) for b in mine] == [(0, built["outputs"], True)]
    entries = [s for s in looked["sources"] if s["storePath"] == src]
    want = {"storePath": src, "narHash": narhash, "subdir": subdir, "rules": rules, "match": "exact",
            "files": None, "extra": None, "recordedBy": "config"}
    assert [project(s, want) for s in entries] == [want]
    assert_no_other_claims(world, repo, rev, drv, others)

    why = world.json("why", out)
    assert why["drvPath"] == drv
    assert {(s["repository"], s["rev"]) for s in why["sources"]} == {(repo, rev)}
    first = why["sources"][0]
    want_why = {**want, "repository": repo, "rev": rev, "distance": 0}
    assert project(first, want_why) == want_why
    assert set(first["refs"]) == refs_at(world.repos[repo], rev)
    return rules


def assert_partial(world: World, built: dict[str, Any], rev: str, src: str, label: str,
                   repo: str = "app") -> dict[str, Comparison]:
    """``src`` holds some of ``rev``'s files (``filtered``) or all of them and more
    (``superset``): proven file by file here; lookup and why must say which, never ``exact``."""
    truth = {rule: compare(Path(src), world.repos[repo], rev, None, rule) for rule in RULES}
    want_kind = {"filtered": "subset", "superset": "superset"}[label]
    assert any(c.kind == want_kind for c in truth.values()), truth
    drv, out = built["drvPath"], built["outputs"]["out"]

    looked = world.json("lookup", repo, rev)
    assert looked["rev"] == rev and looked["fallback"] is None
    assert [b["distance"] for b in looked["builds"] if b["drvPath"] == drv] == [0]
    entries = [s for s in looked["sources"] if s["storePath"] == src]
    assert len(entries) == 1, looked["sources"]
    entry = entries[0]
    assert entry["match"] == label and entry["subdir"] is None and entry["recordedBy"] == "config"
    assert entry["narHash"] == nar_hash(world.nix, src)
    assert entry["rules"] and all(truth[r].kind == want_kind for r in entry["rules"]), (entry, truth)
    listed = [truth[r] for r in entry["rules"]]
    if label == "filtered":
        assert entry["extra"] is None
        assert entry["files"]["agreeing"] == listed[0].agreeing == listed[0].source_total
        assert entry["files"]["total"] in {c.revision_total for c in listed}
    else:
        assert entry["files"] is None
        assert entry["extra"]["count"] in {len(c.extra) for c in listed}
        git_extra = any(p.startswith(".git/") for c in listed for p in c.extra)
        assert entry["extra"]["git"] == git_extra
    assert_no_other_claims(world, repo, rev, drv)

    why = world.json("why", out)
    assert {(s["repository"], s["rev"]) for s in why["sources"]} == {(repo, rev)}
    assert all(s["match"] == label for s in why["sources"]), why["sources"]
    first = why["sources"][0]
    assert (first["storePath"], first["match"], first["files"], first["extra"]) == (
        src, label, entry["files"], entry["extra"])
    assert set(first["refs"]) == refs_at(world.repos[repo], rev)
    return truth


def assert_names_nothing(world: World, built: dict[str, Any]) -> None:
    """No revision of any repository is named for this build, either way round."""
    drv, out = built["drvPath"], built["outputs"]["out"]
    assert world.json("why", out)["sources"] == []
    for rev in world.revs.values():
        assert claims(world, "app", rev, drv) is None


# -- the flake patterns, built once: one Nix invocation for all of them


FLAKE_BUILDS = {  # package -> the tag it is built from
    "self": "v1", "dot": "v2", "nixdir": "v2", "sub": "v3", "named": "v1", "pathinput": "v2",
    "clean": "v3", "nixonly": "v2", "regex": "v1", "empty": "v2", "license": "v2",
}


@pytest.fixture(scope="module")
def flake_built(world: World) -> dict[str, dict[str, Any]]:
    built = world.build(*(f"git+file://{world.app}?rev={world.revs[tag]}#{attr}"
                          for attr, tag in FLAKE_BUILDS.items()))
    assert sorted(built) == sorted(f"p-{attr}" for attr in FLAKE_BUILDS)
    return {attr: built[f"p-{attr}"] for attr in FLAKE_BUILDS}


def flake_self(world: World, tag: str) -> str:
    """Where Nix puts the flake's own tree for a revision: fetchGit's path (export-ignore applied)."""
    path = json.loads(world.nix.run("nix", "flake", "metadata", "--json",
                                    f"git+file://{world.app}?rev={world.revs[tag]}"))["path"]
    assert isinstance(path, str)
    return path


# -- exact: renamed or not, a revision's tree (or a directory of it)


def test_flake_self(world: World, flake_built: dict[str, dict[str, Any]]) -> None:
    built, rev = flake_built["self"], world.revs["v1"]
    src = world.only_src(built)
    assert src == flake_self(world, "v1") and src.endswith("-source")
    # a flake input from git is the tree as git archive writes it: docs/ is there, empty
    assert nar_hash(world.nix, src) == buildref_hash(world.app, rev, rule="export-ignore")
    assert nar_hash(world.nix, src) != buildref_hash(world.app, rev, rule="raw")
    assert os.listdir(Path(src) / "docs") == []
    assert assert_exact(world, built, rev, src) == ["export-ignore"]


def test_flake_dot_and_parent_dir_are_copied_again(world: World,
                                                   flake_built: dict[str, dict[str, Any]]) -> None:
    """``src = ./.;`` in flake.nix and ``src = ../.;`` in nix/package.nix: Nix 2.8 copies the
    flake's tree once more, as ``<h2>-<h1>-source``; same NAR as the revision's tree."""
    rev = world.revs["v2"]
    self_path = flake_self(world, "v2")
    dot, nixdir = world.only_src(flake_built["dot"]), world.only_src(flake_built["nixdir"])
    assert dot == nixdir
    assert dot != self_path and dot.endswith("-" + self_path.removeprefix("/nix/store/"))
    assert nar_hash(world.nix, dot) == nar_hash(world.nix, self_path)
    assert_exact(world, flake_built["dot"], rev, dot)
    assert_exact(world, flake_built["nixdir"], rev, nixdir)


def test_flake_subdirectory(world: World, flake_built: dict[str, dict[str, Any]]) -> None:
    built, rev = flake_built["sub"], world.revs["v3"]
    src = world.only_src(built)
    assert src.endswith("-sub")
    assert compare(Path(src), world.app, rev, "sub").kind == "exact"
    assert assert_exact(world, built, rev, src, subdir="sub") == list(RULES)


def test_builtins_path_with_a_name(world: World, flake_built: dict[str, dict[str, Any]]) -> None:
    built, rev = flake_built["named"], world.revs["v1"]
    src = world.only_src(built)
    assert src.endswith("-app-src")
    assert_exact(world, built, rev, src)


def test_path_input_of_a_subdirectory(world: World, flake_built: dict[str, dict[str, Any]]) -> None:
    """``inputs.sub.url = "path:./sub"``: Nix 2.8 locks it by narHash alone and uses the store
    path ``<narHash>-source`` (the subtree's NAR under the name ``source``) that locking put
    there: the directory as the lock pinned it, which is the commit's when the project relocks."""
    built, rev = flake_built["pathinput"], world.revs["v2"]
    src = world.only_src(built)
    assert src.endswith("-source")
    locked = json.loads(git(world.app, "show", f"{rev}:flake.lock"))["nodes"]["sub"]["locked"]
    assert (locked["type"], locked["path"], locked["narHash"]) == ("path", "./sub", nar_hash(world.nix, src))
    assert assert_exact(world, built, rev, src, subdir="sub") == list(RULES)


def test_clean_source_of_a_clean_tree_is_exact(world: World, flake_built: dict[str, dict[str, Any]]) -> None:
    """cleanSource of a flake's tree removes nothing (no .git, no result links, no objects), and
    nixpkgs names the result ``source``: Nix 2.8 gives the very store path of the flake's self."""
    built, rev = flake_built["clean"], world.revs["v3"]
    src = world.only_src(built)
    assert src == flake_self(world, "v3")
    assert_exact(world, built, rev, src)


def test_fetchgit_with_and_without_a_name(world: World) -> None:
    m = mk_nix(world.system, salt())
    v2, v3 = world.revs["v2"], world.revs["v3"]
    built = world.build_expr(f"""{{
      plain = {m} "p-fetchgit" "read x < ${{{world.fetch_git(v2)}}}/data; echo $x > $out";
      named = {m} "p-fetchgit-named" "read x < ${{{world.fetch_git(v3, name="x")}}}/data; echo $x > $out";
    }}""", "plain", "named")
    plain, named = world.only_src(built["p-fetchgit"]), world.only_src(built["p-fetchgit-named"])
    expr = f"let s = {world.fetch_git(v2)}; in {{ inherit (s) narHash; p = s.outPath; }}"
    info = json.loads(world.nix.run("nix", "eval", "--impure", "--json", "--expr", expr))
    assert (plain, nar_hash(world.nix, plain)) == (info["p"], info["narHash"])
    assert plain.endswith("-source") and named.endswith("-x")
    assert assert_exact(world, built["p-fetchgit"], v2, plain) == ["export-ignore"]
    assert_exact(world, built["p-fetchgit-named"], v3, named)


def test_fetchgit_of_a_commit_that_was_never_a_tip(world: World) -> None:
    """Two commits pushed at once: only the second is ever a branch tip; a build of the first is
    found by ``lookup app <sha>`` and by ``why``."""
    pusher = world.base / f"pusher-{salt()}"
    subprocess.run(["git", "clone", "-q", str(world.app), str(pusher)], check=True)
    (pusher / "data").write_text(f"batch one {salt()}\n")
    first = commit(pusher, "batch one")
    (pusher / "data").write_text(f"batch two {salt()}\n")
    second = commit(pusher, "batch two")
    branch = f"batch-{salt()}"
    git(pusher, "push", "-q", "origin", f"HEAD:refs/heads/{branch}")
    assert refs_at(world.app, first) == set() and refs_at(world.app, second) == {f"refs/heads/{branch}"}

    m = mk_nix(world.system, salt())
    source = world.fetch_git(first)
    built = world.build_expr(f'{m} "p-never-tip" "read x < ${{{source}}}/data; echo $x > $out"')
    wait_recorded(world.svc, "app", f"refs/heads/{branch}")
    src = world.only_src(built["p-never-tip"])
    assert nar_hash(world.nix, src) != buildref_hash(world.app, second)
    assert_exact(world, built["p-never-tip"], first, src, others=[second])
    assert world.json("lookup", "app", first[:12])["rev"] == first  # a short hash too


def test_fetchgit_like_fixed_output(world: World, nix: Nix) -> None:
    """A recursive fixed-output derivation declared by v2's narHash: one never built (imported),
    one built for real (git archive | tar, Nix checks the hash) with a package that uses it."""
    v2 = world.revs["v2"]
    narhash = buildref_hash(world.app, v2)
    fetched = json.loads(nix.run("nix", "eval", "--impure", "--json", "--expr",
                                 f"({world.fetch_git(v2)}).narHash"))
    assert narhash == fetched
    s = salt()
    expr = world.base / f"fod-{s}.nix"
    expr.write_text(f"""rec {{
      never = {fetchgit_like(world.system, world.app, v2, narhash, f"app-fetchgit-never-{s}")};
      fetched = {fetchgit_like(world.system, world.app, v2, narhash, f"app-fetchgit-{s}")};
      user = {mk_nix(world.system, s)} "p-fetchgit-user" "read x < ${{fetched}}/data; echo $x > $out";
    }}""")
    never_drv = nix.instantiate(expr, "never")[0]
    imported = run_cli(world.svc, "import", never_drv, "--hook-socket", str(world.svc.hook_socket))
    assert imported.returncode == 0, imported.stderr.decode()
    built = world.build("-f", str(expr), "fetched", "user")
    fod, user = built[f"app-fetchgit-{s}"], built["p-fetchgit-user"]
    out = fod["outputs"]["out"]
    assert nar_hash(nix, out) == narhash  # Nix itself refused any other content
    assert world.input_srcs(user["drvPath"]) == [] and compare(Path(out), world.app, v2, None,
                                                                "export-ignore").kind == "exact"

    looked = world.json("lookup", "app", v2)
    distances = {b["drvPath"]: (b["distance"], b["valid"]) for b in looked["builds"]}
    assert distances[never_drv] == (0, False)  # matched by its declared hash: nothing fetched
    assert distances[fod["drvPath"]] == (0, True)
    assert distances[user["drvPath"]] == (1, True)
    for drv in (never_drv, fod["drvPath"], user["drvPath"]):
        assert_no_other_claims(world, "app", v2, drv)
    for asked, path in ((out, out), (user["outputs"]["out"], out)):
        why = world.json("why", asked)
        assert {(s["repository"], s["rev"]) for s in why["sources"]} == {("app", v2)}
        first = why["sources"][0]
        want = {"storePath": path, "narHash": narhash, "subdir": None, "match": "exact",
                "rules": ["export-ignore"], "recordedBy": "config"}
        assert project(first, want) == want
        assert set(first["refs"]) == refs_at(world.app, v2)


def test_git_archive_tarball_through_fetchtarball(world: World) -> None:
    """``git archive`` of v1 as a .tar.gz, unpacked by ``builtins.fetchTarball "file://..."``
    (Nix 2.8 allows file://): the same NAR as fetchGit's, under the name given."""
    v1 = world.revs["v1"]
    tarball = world.base / f"app-v1-{salt()}.tar.gz"
    git(world.app, "archive", "--format=tar.gz", "--prefix=app-v1/", "-o", str(tarball), v1)
    m = mk_nix(world.system, salt())
    built = world.build_expr(f"""{m} "p-tarball" "read x < ${{builtins.fetchTarball {{
        url = "file://{tarball}"; name = "app-tarball"; }}}}/data; echo $x > $out" """)
    src = world.only_src(built["p-tarball"])
    assert src.endswith("-app-tarball")
    assert assert_exact(world, built["p-tarball"], v1, src) == ["export-ignore"]


def test_flake_lock_pin_of_a_dependency_commit(world: World) -> None:
    """consumer's flake.lock pins dep at d1, which was never dep's tip: the build used d1's tree,
    and why names d1 (and the pin), not dep's tip."""
    d1, d2, c1 = world.other["d1"], world.other["d2"], world.other["c1"]
    locked = json.loads(git(world.repos["consumer"], "show", f"{c1}:flake.lock"))["nodes"]["dep"]["locked"]
    assert locked["rev"] == d1 and refs_at(world.repos["dep"], d1) == set()
    built = world.build(f"git+file://{world.repos['consumer']}?rev={c1}")["consumer"]
    src = world.only_src(built)
    assert src.endswith("-source") and nar_hash(world.nix, src) == locked["narHash"]
    assert_exact(world, built, d1, src, repo="dep", others=[d2])
    why = world.json("why", built["outputs"]["out"])
    pins = {(x["input"], x["rev"], x["lockFile"]) for x in why["lockedInputs"]}
    assert ("dep", d1, f"consumer@{c1}:flake.lock") in pins
    assert all(rev == d1 for _, rev, _ in pins)


def test_package_before_the_dependency_built_from_an_older_tag(world: World) -> None:
    """v3's package embeds a build of v1 (a dependency built from the v1 tag): why ranks v3
    (distance 0) before v1 (distance 1)."""
    v1, v3 = world.revs["v1"], world.revs["v3"]
    m = mk_nix(world.system, salt())
    built = world.build_expr(f"""rec {{
      old = {m} "p-from-v1" "read x < ${{{world.fetch_git(v1)}}}/data; echo $x > $out";
      new = {m} "p-from-v3" "read x < ${{{world.fetch_git(v3)}}}/data; read y < ${{old}}; echo $x $y > $out";
    }}""", "old", "new")
    old, new = built["p-from-v1"], built["p-from-v3"]
    why = world.json("why", new["outputs"]["out"])
    ranked = [(s["rev"], s["distance"], s["match"]) for s in why["sources"]]
    assert ranked == [(v3, 0, "exact"), (v1, 1, "exact")]
    v1_builds = {b["drvPath"]: b["distance"] for b in world.json("lookup", "app", "v1")["builds"]}
    assert (v1_builds[old["drvPath"]], v1_builds[new["drvPath"]]) == (0, 1)
    v3_builds = {b["drvPath"]: b["distance"] for b in world.json("lookup", "app", "v3")["builds"]}
    assert v3_builds[new["drvPath"]] == 0 and old["drvPath"] not in v3_builds
    assert claims(world, "app", world.revs["v2"], new["drvPath"]) is None


def test_tag_wins_over_a_branch_of_the_same_name(world: World) -> None:
    tag, branch = git(world.app, "rev-parse", "refs/tags/rel"), git(world.app, "rev-parse", "refs/heads/rel")
    assert tag != branch and git(world.app, "rev-parse", "rel") == tag  # git's own order
    m = mk_nix(world.system, salt())
    built = world.build_expr(f"""{{
      tag = {m} "p-rel-tag" "read x < ${{{world.fetch_git(tag)}}}/data; echo $x > $out";
      branch = {m} "p-rel-branch" "read x < ${{{world.fetch_git(branch)}}}/data; echo $x > $out";
    }}""", "tag", "branch")
    by_tag = world.json("lookup", "app", "rel")
    assert (by_tag["ref"], by_tag["rev"]) == ("refs/tags/rel", tag)
    drvs = {b["drvPath"] for b in by_tag["builds"]}
    assert built["p-rel-tag"]["drvPath"] in drvs and built["p-rel-branch"]["drvPath"] not in drvs
    by_branch = world.json("lookup", "app", "refs/heads/rel")
    assert (by_branch["ref"], by_branch["rev"]) == ("refs/heads/rel", branch)
    drvs = {b["drvPath"] for b in by_branch["builds"]}
    assert built["p-rel-branch"]["drvPath"] in drvs and built["p-rel-tag"]["drvPath"] not in drvs


# -- wrong answers that must not happen


def test_empty_directory_fixed_output_names_no_commit(world: World, nix: Nix) -> None:
    """A recursive fixed-output derivation of an empty directory has the very NAR hash of app's
    docs/ as git archive leaves it (export-ignore'd files only): that names no commit."""
    empty = world.base / f"empty-{salt()}"
    empty.mkdir()
    empty_hash = nix.run("nix", "hash", "path", str(empty)).decode().strip()
    for rev in world.revs.values():  # the trap is real: every revision has an empty docs/
        assert buildref_hash(world.app, rev, "docs", "export-ignore") == empty_hash
        assert buildref_hash(world.app, rev, "docs", "raw") != empty_hash
    s = salt()
    built = world.build_expr(f"""derivation {{ name = "empty-fod-{s}"; system = "{world.system}";
      builder = "/bin/sh"; PATH = "/bin"; args = [ "-c" "mkdir $out" ];
      outputHashMode = "recursive"; outputHashAlgo = "sha256"; outputHash = "{empty_hash}"; }}""")
    fod = built[f"empty-fod-{s}"]
    assert nar_hash(nix, fod["outputs"]["out"]) == empty_hash
    assert_names_nothing(world, fod)
    by_hash = run_cli(world.svc, "why", empty_hash, "--json")
    if by_hash.returncode == 0:  # or one clean error: either way, no commit
        assert json.loads(by_hash.stdout)["sources"] == []
    else:
        assert by_hash.stderr.decode().startswith("error: ")


def test_empty_file_and_license_name_no_commit(world: World, flake_built: dict[str, dict[str, Any]]) -> None:
    """``${./empty.txt}`` and ``${./LICENSE}`` are the revision's files, byte for byte — and the
    same in every revision (and in countless other repositories): no commit is named."""
    rev = world.revs["v2"]
    for attr, name in (("empty", "empty.txt"), ("license", "LICENSE")):
        src = world.only_src(flake_built[attr])
        assert src.endswith("-" + name) and Path(src).is_file()
        assert compare(Path(src), world.app, rev, name).kind == "exact"
        assert {buildref_hash(world.app, r, name) for r in world.revs.values()} == {nar_hash(world.nix, src)}
        assert_names_nothing(world, flake_built[attr])


def test_users_copy_is_listed_after_the_configured_repository(world: World, nix: Nix) -> None:
    """nobody copies the repository into a directory of their own, tags v3 ``v9.9-official`` and
    records the copy: why lists the configured repository first, the copy after it."""
    nobody = pwd.getpwnam("nobody")
    home = Path(tempfile.mkdtemp(prefix="brn", dir="/tmp"))
    svc = ServiceProcess(repository=[{"name": "app", "path": str(world.app)}])
    try:
        os.chown(home, nobody.pw_uid, nobody.pw_gid)
        copy = home / "app-copy"
        as_nobody = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                     "env", f"HOME={home}"]

        def run_as_nobody(*argv: str) -> subprocess.CompletedProcess[bytes]:
            proc = subprocess.run([*as_nobody, *argv], capture_output=True, check=False)
            assert proc.returncode == 0, proc.stderr.decode(errors="replace")
            return proc

        run_as_nobody("cp", "-r", str(world.app), str(copy))
        v3 = world.revs["v3"]
        run_as_nobody("git", "-C", str(copy), "tag", "v9.9-official", v3)
        svc.start()
        wait_recorded(svc, "app")
        m = mk_nix(world.system, salt())
        path = world.base / f"copy-{salt()}.nix"
        path.write_text(f'{m} "p-official" "read x < ${{{world.fetch_git(v3)}}}/data; echo $x > $out"')
        built = nix_build_json(svc.nix_env(nix.env), "-f", str(path))[0]
        svc.wait_idle()
        recorded = run_as_nobody(sys.executable, "-m", "buildref", "record", str(copy), "--socket",
                                 str(svc.query_socket), "--json")
        assert json.loads(recorded.stdout)["refs"]["refs/tags/v9.9-official"] == v3

        why = cli_json(svc, "why", built["outputs"]["out"])
        listed = [(s["repository"], s["rev"], s["recordedBy"], s["match"]) for s in why["sources"]]
        assert listed == [("app", v3, "config", "exact"), (str(copy), v3, nobody.pw_uid, "exact")]
        assert "refs/tags/v9.9-official" in why["sources"][1]["refs"]
        assert "refs/tags/v9.9-official" not in why["sources"][0]["refs"]
        looked = cli_json(svc, "lookup", str(copy), "v9.9-official")
        assert looked["rev"] == v3 and built["drvPath"] in {b["drvPath"] for b in looked["builds"]}
        assert {s["recordedBy"] for s in looked["sources"]} == {nobody.pw_uid}
    finally:
        svc.close()
        shutil.rmtree(home, ignore_errors=True)


# -- partial: some of a revision's files, or all of them and more


def test_filter_keeping_nix_files(world: World, flake_built: dict[str, dict[str, Any]]) -> None:
    built, rev = flake_built["nixonly"], world.revs["v2"]
    src = world.only_src(built)
    truth = assert_partial(world, built, rev, src, "filtered")
    assert sorted(store_files(Path(src))) == ["default.nix", "flake.nix", "nix/lib.nix", "nix/package.nix"]
    assert truth["export-ignore"].kind == truth["raw"].kind == "subset"


def test_source_by_regex(world: World, flake_built: dict[str, dict[str, Any]]) -> None:
    built, rev = flake_built["regex"], world.revs["v1"]
    src = world.only_src(built)
    assert_partial(world, built, rev, src, "filtered")
    assert sorted(store_files(Path(src))) == ["data", "sub/part.txt"]


def test_non_flake_dot_of_a_checkout_copies_git(world: World) -> None:
    """``src = ./.;`` in a checkout's default.nix (not a flake) copies the whole directory,
    ``.git`` included, named after the directory."""
    checkout = world.base / f"app-checkout-{salt()}"
    subprocess.run(["git", "clone", "-q", str(world.app), str(checkout)], check=True)
    git(checkout, "checkout", "-q", "v1")
    built = world.build("-f", str(checkout / "default.nix"), "checkout")["p-checkout"]
    src = world.only_src(built)
    assert src.endswith("-" + checkout.name) and (Path(src) / ".git" / "HEAD").is_file()
    truth = assert_partial(world, built, world.revs["v1"], src, "superset")
    assert truth["raw"].kind == "superset" and all(p.startswith(".git/") for p in truth["raw"].extra)


def test_clean_source_of_a_dirty_checkout(world: World) -> None:
    """cleanSource drops .git, *.o and result links, but keeps an untracked file and an ignored
    build/ directory: every file of v2, and two more."""
    work = world.base / f"work-{salt()}"
    subprocess.run(["git", "clone", "-q", str(world.app), str(work)], check=True)
    git(work, "checkout", "-q", "v2")
    (work / "notes.txt").write_text("untracked\n")
    (work / "build").mkdir()
    (work / "build" / "out.bin").write_text("ignored\n")
    (work / "main.o").write_text("object\n")
    (work / "result").symlink_to("/nix/store")
    status = git(work, "status", "--porcelain", "--ignored", "--untracked-files=all")
    assert sorted(status.splitlines()) == ["!! build/out.bin", "!! main.o", "?? notes.txt", "?? result"]
    built = world.build("-f", str(work / "default.nix"), "cleaned")["p-cleaned"]
    src = world.only_src(built)
    assert src.endswith("-source")
    truth = assert_partial(world, built, world.revs["v2"], src, "superset")
    assert truth["raw"].extra == ("build/out.bin", "notes.txt")


def test_fetchgit_with_submodules(world: World) -> None:
    """``fetchGit { submodules = true; }`` (Nix 2.8: a checkout, no export-ignore, no .git): the
    superproject's files plus lib's l1 tree at vendor/lib — lib's l1 is named, never as exact."""
    s1, l1 = world.other["s1"], world.other["l1"]
    superproject, lib = world.repos["super"], world.repos["lib"]
    assert git(superproject, "rev-parse", f"{s1}:vendor/lib") == l1 and refs_at(lib, l1) == set()
    m = mk_nix(world.system, salt())
    fetch = f'builtins.fetchGit {{ url = "{superproject}"; rev = "{s1}"; submodules = true; }}'
    built = world.build_expr(f'{m} "p-submodules" "read x < ${{{fetch}}}/vendor/lib/lib.txt; echo $x > $out"')
    b = built["p-submodules"]
    src = world.only_src(b)
    truth = compare(Path(src), superproject, s1)
    assert truth.kind == "superset" and all(p.startswith("vendor/lib/") for p in truth.extra)
    assert compare(Path(src) / "vendor" / "lib", lib, l1).kind == "exact"
    vendored = world.nix.run("nix", "hash", "path", f"{src}/vendor/lib").decode().strip()
    assert vendored == buildref_hash(lib, l1)

    looked = world.json("lookup", "super", s1)
    entries = [(s.get("match"), s.get("extra")) for s in looked["sources"] if s["storePath"] == src]
    assert entries == [("superset", {"count": len(truth.extra), "git": False})]
    assert b["drvPath"] in {x["drvPath"] for x in looked["builds"]}
    assert claims(world, "lib", l1, b["drvPath"]) is not None
    assert claims(world, "lib", world.other["l2"], b["drvPath"]) is None
    why = world.json("why", b["outputs"]["out"])
    assert {(s["repository"], s["rev"]) for s in why["sources"]} == {("super", s1), ("lib", l1)}
    assert not any(s["match"] == "exact" and s["storePath"] == src and s["subdir"] is None
                   for s in why["sources"])
    assert [s["match"] for s in why["sources"] if s["repository"] == "super"] == ["superset"]


# -- the ground-truth helper itself, against git's own checkouts and archives


def test_ground_truth_helper(tmp_path: Path) -> None:
    repo = init(tmp_path / "r")
    (repo / "d").mkdir()
    (repo / "d" / "a.txt").write_text("a\n")
    (repo / "run.sh").write_text("#!/bin/sh\n")
    (repo / "run.sh").chmod(0o755)
    (repo / "link").symlink_to("d/a.txt")
    (repo / "gone.md").write_text("ignored by archive\n")
    (repo / ".gitattributes").write_text("gone.md export-ignore\n")
    rev = commit(repo, "one")
    link_blob = subprocess.run(["git", "hash-object", "--stdin"], input=b"d/a.txt", capture_output=True,
                               check=True).stdout.decode().strip()
    assert revision_files(repo, rev)["link"] == ("120000", link_blob) == ("120000", blob_id(b"d/a.txt"))

    exported = tmp_path / "exported"
    exported.mkdir()
    tar = subprocess.run(["git", "-C", str(repo), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(exported)], input=tar, check=True)
    assert compare(exported, repo, rev, rule="export-ignore").kind == "exact"
    raw = compare(exported, repo, rev, rule="raw")
    assert (raw.kind, raw.missing, raw.agreeing) == ("subset", ("gone.md",), 4)
    assert compare(repo, repo, rev).kind == "superset"  # the checkout: .git too
    assert compare(repo / "d", repo, rev, "d").kind == "exact"
    (exported / "run.sh").chmod(0o644)  # a mode is part of a file
    assert compare(exported, repo, rev, rule="export-ignore").differing == ("run.sh",)
