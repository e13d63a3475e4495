"""Partial matches beyond the pattern corpus: found whichever arrives first (the build or the
revision), never ranked above an exact match, and a flat fixed output of one file, only when the
derivation names the revision and the file could tell the repository from others."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from buildsets import salt
from helpers import Nix, git, nix_string
from servicectl import ServiceProcess, nix_build_json, wait_for


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD")


def cli_json(svc: ServiceProcess, *args: str) -> Any:
    argv = [sys.executable, "-m", "buildref", *args, "--json", "--socket", str(svc.query_socket)]
    proc = subprocess.run(argv, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def project(tmp: Path) -> tuple[Path, str]:
    repo = tmp / "proj"
    (repo / "src").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    for name in ("a.txt", "b.txt", "c.txt"):
        (repo / "src" / name).write_text(f"{name} {salt()}\n")
    (repo / "README.md").write_text(f"readme {salt()}\n")
    (repo / "notes.md").write_text(f"notes {salt()}\n")
    return repo, commit(repo, "one")


def subset_expr(repo: Path, system: str) -> str:
    """A filter keeping only src/*.txt of the work tree: a subset of the revision's files."""
    s = salt()
    return f"""let src = builtins.path {{ name = "kept"; path = {nix_string(str(repo))};
      filter = p: t: t == "directory" || builtins.match ".*/src/[^/]*\\\\.txt" p != null; }}; in
      derivation {{ name = "uses-subset-{s}"; system = {nix_string(system)}; builder = "/bin/sh";
        args = [ "-c" "read x < ${{src}}/src/a.txt; echo $x > $out" ]; }}"""


def test_partial_match_whichever_arrives_first(nix: Nix, tmp_path: Path, system: str) -> None:
    """Built before the repository was recorded: found when it is; and the other way round."""
    repo, rev = project(tmp_path)
    svc = ServiceProcess().start()
    try:
        expr = tmp_path / "subset.nix"
        expr.write_text(subset_expr(repo, system))
        built = nix_build_json(svc.nix_env(nix.env), "-f", str(expr))[0]
        svc.wait_idle()
        assert cli_json(svc, "why", built["outputs"]["out"])["sources"] == []  # nothing recorded yet
        cli_json(svc, "record", str(repo))
        found = cli_json(svc, "lookup", str(repo), "main")
        entry = next(s for s in found["sources"] if s["match"] != "exact")
        assert (entry["match"], entry["files"]) == ("filtered", {"agreeing": 3, "total": 5})
        assert [b["drvPath"] for b in found["builds"]] == [built["drvPath"]]
        why = cli_json(svc, "why", built["outputs"]["out"])
        assert [(s["rev"], s["match"], s["files"]) for s in why["sources"]] == [
            (rev, "filtered", {"agreeing": 3, "total": 5})]

        # the other way round: recorded first, then a new commit built (through its work tree)
        (repo / "src" / "a.txt").write_text(f"changed {salt()}\n")
        rev2 = commit(repo, "two")
        cli_json(svc, "record", str(repo))
        expr.write_text(subset_expr(repo, system))
        built2 = nix_build_json(svc.nix_env(nix.env), "-f", str(expr))[0]
        svc.wait_idle()
        why2 = cli_json(svc, "why", built2["outputs"]["out"])
        assert [(s["rev"], s["match"]) for s in why2["sources"]] == [(rev2, "filtered")]
        # and the first revision does not claim the second build (a.txt differs)
        first = cli_json(svc, "lookup", str(repo), rev)
        assert built2["drvPath"] not in {b["drvPath"] for b in first["builds"]}
    finally:
        svc.close()


def test_a_partial_match_never_outranks_an_exact_one(nix: Nix, tmp_path: Path, system: str) -> None:
    """One derivation uses the revision exactly (fetchGit) and a filtered copy of a later one,
    closer to it: the exact source is first all the same."""
    repo, rev = project(tmp_path)
    svc = ServiceProcess(repository=[{"name": "proj", "path": str(repo)}]).start()
    try:
        (repo / "notes.md").write_text(f"later {salt()}\n")
        later = commit(repo, "later")
        s = salt()
        expr = tmp_path / "both.nix"
        expr.write_text(f"""let
          exact = builtins.fetchGit {{ url = {nix_string(str(repo))}; rev = "{rev}"; }};
          inner = derivation {{ name = "inner-{s}"; system = {nix_string(system)}; builder = "/bin/sh";
            args = [ "-c" "read x < ${{exact}}/src/a.txt; echo $x > $out" ]; }};
          kept = builtins.path {{ name = "kept"; path = {nix_string(str(repo))};
            filter = p: t: t == "directory" || builtins.match ".*/notes\\\\.md" p != null
                                             || builtins.match ".*/src/b\\\\.txt" p != null; }};
        in derivation {{ name = "outer-{s}"; system = {nix_string(system)}; builder = "/bin/sh";
          args = [ "-c" "read x < ${{inner}}; read y < ${{kept}}/notes.md; echo $x $y > $out" ]; }}""")
        built = nix_build_json(svc.nix_env(nix.env), "-f", str(expr))[0]
        svc.wait_idle()
        wait_for(lambda: cli_json(svc, "refs", "proj") != [], what="the repository recorded")
        why = cli_json(svc, "why", built["outputs"]["out"])
        ranked = [(s["rev"], s["match"], s["distance"]) for s in why["sources"]]
        # the filtered copy is used directly (distance 0), the exact one through `inner` (1)
        assert ranked == [(rev, "exact", 1), (later, "filtered", 0)], ranked
    finally:
        svc.close()


def _flat_expr(system: str, rev: str, path: str, content: str) -> str:
    digest = hashlib.sha256(content.encode()).hexdigest()
    text = nix_string(content)[1:-1]
    return f"""derivation {{ name = "raw-file-{salt()}"; system = {nix_string(system)}; builder = "/bin/sh";
      args = [ "-c" "printf '%s' \\"{text}\\" > $out" ];
      url = "https://raw.githubusercontent.com/org/proj/{rev}/{path}";
      outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = "{digest}"; }}"""


def test_flat_fixed_output_of_one_file(nix: Nix, tmp_path: Path, system: str) -> None:
    repo, rev = project(tmp_path)
    (repo / "LICENSE").write_text("Apache License\nVersion 2.0, January 2004\n")
    rev = commit(repo, "licence")
    svc = ServiceProcess(repository=[{"name": "proj", "path": str(repo)}]).start()
    try:
        own = (repo / "src" / "b.txt").read_text()
        files = {"own.nix": _flat_expr(system, rev, "src/b.txt", own),
                 "licence.nix": _flat_expr(system, rev, "LICENSE", (repo / "LICENSE").read_text()),
                 "wrong.nix": _flat_expr(system, rev, "src/c.txt", own)}  # names a file that differs
        built = {}
        for name, text in files.items():
            (tmp_path / name).write_text(text)
            built[name] = nix_build_json(svc.nix_env(nix.env), "-f", str(tmp_path / name))[0]
        svc.wait_idle()
        wait_for(lambda: cli_json(svc, "refs", "proj") != [], what="the repository recorded")
        found = cli_json(svc, "lookup", "proj", rev)
        assert {b["drvPath"] for b in found["builds"]} == {built["own.nix"]["drvPath"]}
        entry = next(s for s in found["sources"] if s["subdir"] == "src/b.txt")
        assert (entry["match"], entry["files"]) == ("filtered", {"agreeing": 1, "total": 1})
        why = cli_json(svc, "why", built["own.nix"]["outputs"]["out"])
        assert [(s["rev"], s["subdir"], s["match"]) for s in why["sources"]] == [
            (rev, "src/b.txt", "filtered")]
        for name in ("licence.nix", "wrong.nix"):  # a common file, or not the file's content: nothing
            assert cli_json(svc, "why", built[name]["outputs"]["out"])["sources"] == []
    finally:
        svc.close()


def test_git_archive_rewrites_match_exactly(nix: Nix, tmp_path: Path, system: str) -> None:
    """fetchGit (git archive on Nix 2.8) expands $Format:%H$ in an export-subst file and writes
    CRLF for `eol=crlf` files: the copy still matches its revision exactly; a placeholder expanded
    from the refs present at fetch time (%D) is not guessed, so nothing is named for that one."""
    repo, _ = project(tmp_path)
    (repo / ".gitattributes").write_text(".git_archival.txt export-subst\n*.bat text eol=crlf\n")
    (repo / ".git_archival.txt").write_text("node: $Format:%H$\nnode-date: $Format:%cI$\n")
    (repo / "run.bat").write_text("echo one\necho two\n")
    rev = commit(repo, "archival")
    (repo / ".git_archival.txt").write_text("node: $Format:%H$\nref-names: $Format:%D$\n")
    refs_dependent = commit(repo, "ref names")
    svc = ServiceProcess(repository=[{"name": "proj", "path": str(repo)}]).start()
    try:
        built = {}
        for label, target in (("subst", rev), ("refs", refs_dependent)):
            expr = tmp_path / f"{label}.nix"
            fetch = f'builtins.fetchGit {{ url = {nix_string(str(repo))}; rev = "{target}"; }}'
            expr.write_text(f"""let src = {fetch}; in
              derivation {{ name = "{label}-{salt()}"; system = {nix_string(system)}; builder = "/bin/sh";
                args = [ "-c" "read x < ${{src}}/.git_archival.txt; echo $x > $out" ]; }}""")
            built[label] = nix_build_json(svc.nix_env(nix.env), "-f", str(expr))[0]
            src = json.loads(nix.run("nix", "show-derivation", built[label]["drvPath"]))
            copied = next(iter(src.values()))["inputSrcs"][0]
            if label == "subst":  # what Nix copied really is rewritten
                assert (Path(copied) / ".git_archival.txt").read_text().startswith(f"node: {rev}\n")
                assert (Path(copied) / "run.bat").read_bytes() == b"echo one\r\necho two\r\n"
        svc.wait_idle()
        wait_for(lambda: cli_json(svc, "refs", "proj") != [], what="the repository recorded")
        why = cli_json(svc, "why", built["subst"]["outputs"]["out"])
        assert [(s["rev"], s["match"], s["rules"]) for s in why["sources"]] == [
            (rev, "exact", ["export-ignore"])]
        found = cli_json(svc, "lookup", "proj", rev)
        assert [b["drvPath"] for b in found["builds"]] == [built["subst"]["drvPath"]]
        # nor as a superset of an older revision: the files it has more are tracked in later ones
        assert cli_json(svc, "why", built["refs"]["outputs"]["out"])["sources"] == []
        later = cli_json(svc, "lookup", "proj", refs_dependent)  # no build of its own: its parent's
        assert later["fallback"] == {"rev": rev, "commitsBehind": 1}
        assert built["refs"]["drvPath"] not in {b["drvPath"] for b in later["builds"]}
    finally:
        svc.close()
