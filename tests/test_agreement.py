"""Where other Nix implementations' test vectors found buildref disagreeing with Nix 2.8: hash
strings, derivations Nix refuses, non-canonical drv paths on the command line and ATerm escapes.
Every fact about Nix is established here by running the real Nix 2.8."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildref.errors import BadDerivation, BadHash
from buildref.nix.aterm import parse, print_drv, split
from buildref.nix.hashes import Hash, HashAlgo
from buildref.nix.storepath import DEFAULT_STORE_DIR, text_path
from helpers import Nix, assert_error_line, buildref
from servicectl import ServiceProcess

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _nix(nix: Nix, *args: str, cwd: str | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, env=nix.env, capture_output=True, check=False, cwd=cwd)


# -- 17: base64 in SRI and algo: hashes ---------------------------------------------------------

def _hash_cases(algo: str) -> list[tuple[str, str | None]]:
    """(hash string, algorithm given separately or None): padding, garbage after '=', newlines,
    non-zero leftover bits, bad characters, and the other forms for contrast."""
    digest = hashlib.new(algo, b"buildref agreement").digest()
    padded = base64.b64encode(digest).decode()
    bare = padded.rstrip("=")
    # every algorithm's digest leaves 2 or 4 unused bits in the last character: flip the lowest
    odd_bits = bare[:-1] + B64[B64.index(bare[-1]) ^ 1]
    sri = [bare, padded, padded + "==", bare + "=====", bare + "=garbage!!", bare + "=:x",
           bare[:10] + "\n" + bare[10:], bare + "\n", bare + "\n=", odd_bits, bare + "A", bare[:-1],
           "!" + bare, bare + " ", bare + "\t", "", "=" + bare, bare + "=-", bare + "=\u00e9"]
    colon = [bare, padded, padded + "=", bare + "=x", bare + "\n", bare[:-1] + "\n" + bare[-1],
             bare + "\n=", bare + "=\n", odd_bits + "=" * (len(padded) - len(bare)), bare + "AA",
             bare + "=\u00e9", digest.hex(), digest.hex().upper(), Hash(HashAlgo(algo), digest).nix32]
    return ([(f"{algo}-{s}", None) for s in sri] + [(f"{algo}:{s}", None) for s in colon]
            + [(s, algo) for s in (bare, padded, digest.hex(), padded[:-1] + "\n")])


def _nix_hash(nix: Nix, command: str, text: str, algo: str | None) -> str | None:
    """What ``nix hash <command>`` prints for ``text``, or None when Nix refuses it."""
    proc = _nix(nix, "nix", "hash", command, *(["--type", algo] if algo else []), text)
    if proc.returncode != 0:
        assert proc.stderr.startswith(b"error:"), proc.stderr
        return None
    return proc.stdout.decode().strip()


@pytest.mark.parametrize("algo", ["md5", "sha1", "sha256", "sha512"])
def test_hash_strings_are_accepted_and_refused_as_nix_does(nix: Nix, algo: str) -> None:
    accepted: set[str] = set()
    for text, given in _hash_cases(algo):
        sri = _nix_hash(nix, "to-sri", text, given)
        nix32 = _nix_hash(nix, "to-base32", text, given)
        assert (sri is None) == (nix32 is None), text
        expected = None if given is None else HashAlgo(given)
        if sri is None:
            with pytest.raises(BadHash):
                Hash.parse(text, expected)
            continue
        accepted.add(text)
        parsed = Hash.parse(text, expected)
        assert (parsed.sri, parsed.nix32) == (sri, nix32), repr(text)
    # the facts the issue turns on, as Nix 2.8 shows them (not vacuous: both outcomes occur)
    bare = base64.b64encode(hashlib.new(algo, b"buildref agreement").digest()).decode().rstrip("=")
    assert f"{algo}-{bare}" in accepted  # SRI without padding
    assert f"{algo}-{bare}=garbage!!" in accepted  # SRI: decoding stops at the first '='
    assert f"{algo}-{bare[:10]}\n{bare[10:]}" in accepted  # newlines are skipped
    assert f"{algo}:{bare}" not in accepted  # algo:base64 must have base64's padded length
    assert f"{algo}-!{bare}" not in accepted


def test_why_takes_an_unpadded_sri_hash(service: ServiceProcess) -> None:
    padded = Hash.of(HashAlgo.SHA256, b"never recorded").sri
    answers = []
    for form in (padded, padded.rstrip("=")):
        proc = buildref("why", form, "--json", "--socket", str(service.query_socket))
        answers.append(json.loads(proc.stdout))
    assert answers[0] == answers[1] and answers[0]["narHash"] == padded


# -- drvs written into the store directory ------------------------------------------------------

@pytest.fixture
def store_file() -> Iterator[list[str]]:
    """Files this test writes into the store directory (not registered with Nix), removed after."""
    made: list[str] = []
    yield made
    for path in made:
        if os.path.exists(path):
            os.unlink(path)


def _to_file(nix: Nix, name: str, text: bytes) -> subprocess.CompletedProcess[bytes]:
    """``builtins.toFile``: stores ``text`` as a text object, as Nix stores a .drv it writes, and
    checks it as a derivation when the name ends in .drv."""
    assert b"''" not in text and b"${" not in text
    expr = f"builtins.toFile \"{name}\" ''{text.decode()}''"
    return _nix(nix, "nix-instantiate", "--eval", "--read-write-mode", "--expr", expr)


def _write_drv(store_file: list[str], name: str, text: bytes) -> str:
    """Put ``text`` where Nix would store it as ``name`` (no references)."""
    path = text_path(text, name)
    Path(path).write_bytes(text)
    store_file.append(path)
    return path


# -- 18: a derivation with no outputs -----------------------------------------------------------

NO_OUTPUTS = b'Derive([],[],[],"x86_64-linux","/bin/sh",[],[("name","noout")])'
ONE_OUTPUT = b'Derive([("out","","","")],[],[],"x86_64-linux","/bin/sh",[],[("name","noout")])'


def test_a_derivation_without_outputs_is_refused_as_nix_refuses_it(nix: Nix, store_file: list[str]) -> None:
    # Nix 2.8 parses it (a parse error reads "error parsing derivation"), then refuses it in
    # BasicDerivation::type(), which storing a .drv and hashDerivationModulo both call
    refused = _to_file(nix, "noout.drv", NO_OUTPUTS)
    err = refused.stderr.decode()
    assert refused.returncode != 0 and "must have at least one output" in err, err
    assert "error parsing derivation" not in err
    malformed = _to_file(nix, "bad.drv", NO_OUTPUTS[:-3])
    assert malformed.returncode != 0 and "error parsing derivation" in malformed.stderr.decode()
    # the same bytes with one output are a derivation Nix stores, and buildref shows it as Nix does
    stored = _to_file(nix, "noout.drv", ONE_OUTPUT)
    assert stored.returncode == 0, stored.stderr.decode()
    one = json.loads(stored.stdout)
    assert one == text_path(ONE_OUTPUT, "noout.drv")
    assert buildref("drv", "show", one).stdout == _nix(nix, "nix", "show-derivation", one).stdout

    path = _write_drv(store_file, "noout.drv", NO_OUTPUTS)
    with pytest.raises(BadDerivation, match="must have at least one output"):
        parse(NO_OUTPUTS, "noout")
    for command in ("show", "verify"):
        assert_error_line(buildref("drv", command, path, check=False), path, "must have at least one output")


# -- 19: dynamic-derivation inputs inside a plain Derive ----------------------------------------

INPUT = b'"/nix/store/0000000000000000000000000000000a-a.drv"'
NESTED_INPUTS = b'[(' + INPUT + b',(["out"],[("out",["out"])]))]'
REST = b',[],"x86_64-linux","/bin/sh",[],[("name","dyn")])'


def test_nested_input_outputs_need_drv_with_version(nix: Nix, store_file: list[str]) -> None:
    plain = b'Derive([("out","","","")],' + NESTED_INPUTS + REST
    versioned = b'DrvWithVersion("xp-dyn-drv",[("out","","","")],' + NESTED_INPUTS + REST
    proc = _to_file(nix, "dyn.drv", plain)
    err = proc.stderr.decode()
    assert proc.returncode != 0 and "error parsing derivation" in err and "expected string ',['" in err, err
    # Nix 2.8 knows no DrvWithVersion at all (later Nix writes it): buildref reads it on purpose
    proc = _to_file(nix, "dyn.drv", versioned)
    assert proc.returncode != 0 and "expected string 'Derive(['" in proc.stderr.decode()

    with pytest.raises(BadDerivation):
        parse(plain, "dyn")
    drv = parse(versioned, "dyn")
    assert drv.input_drvs[0][1].children and print_drv(drv) == versioned
    path = _write_drv(store_file, "dyn.drv", plain)
    for command in ("show", "verify"):
        assert_error_line(buildref("drv", command, path, check=False), path)


# -- 20: non-canonical drv paths on the command line --------------------------------------------

@pytest.fixture(scope="module")
def drv(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> str:
    expr = tmp_path_factory.mktemp("canon") / "canon.nix"
    expr.write_text('derivation { name = "canon"; system = "x86_64-linux"; builder = "/bin/sh"; }')
    return nix.instantiate(expr)[0]


def test_non_canonical_drv_paths_are_read_as_nix_reads_them(nix: Nix, drv: str) -> None:
    base = drv.rsplit("/", 1)[1]
    store = DEFAULT_STORE_DIR
    shown = _nix(nix, "nix", "show-derivation", drv).stdout
    assert json.loads(shown).keys() == {drv}
    forms = [f"{drv}/", f"/{drv}", f"{store}/./{base}", f"/nix//store/{base}",
             f"{drv}/.", f"{store}//{base}//", f"///{store}/.//{base}/./"]
    for form in forms:
        assert _nix(nix, "nix", "show-derivation", form).stdout == shown, form
        assert buildref("drv", "show", form).stdout == shown, form
        verified = json.loads(buildref("drv", "verify", "--json", form).stdout)
        assert verified == [{"drvPath": drv, "ok": True, "mismatches": []}], form
    # relative to the current directory, as a shell in the store directory gives them
    for form in (base, f"./{base}", f".//{base}/"):
        proc = subprocess.run([sys.executable, "-m", "buildref", "drv", "show", form], cwd=store,
                              capture_output=True, check=False)
        assert proc.stdout == shown, (form, proc.stderr)


def test_drv_paths_that_leave_the_store_or_go_inside_an_object_are_refused(nix: Nix, drv: str) -> None:
    base = drv.rsplit("/", 1)[1]
    store = DEFAULT_STORE_DIR
    shown = _nix(nix, "nix", "show-derivation", drv).stdout
    # Nix resolves '..' lexically and drops whatever follows a store object's name; buildref
    # refuses both rather than guess what a path through '..' or into a .drv file was meant to name
    for form in (f"{store}/../store/{base}", f"{drv}/../{base}", f"{drv}/inside"):
        assert _nix(nix, "nix", "show-derivation", form).stdout == shown, form
        for command in ("show", "verify"):
            assert_error_line(buildref("drv", command, form, check=False), form)
    assert_error_line(buildref("drv", "show", f"{drv}/..", check=False))
    assert_error_line(buildref("drv", "show", f"{store}/..{base}", check=False))


# -- 21: the \t escape ---------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [b"", b"\x01"], ids=["escapes-only", "raw-control-byte"])
def test_tabs_round_trip_through_a_drv_nix_wrote(nix: Nix, tmp_path: Path, extra: bytes) -> None:
    # a raw control byte elsewhere (which Nix writes as it is) sends `drv show` through decoding
    # and re-escaping every string instead of copying the file's escapes into the JSON
    expr = tmp_path / "tabs.nix"
    expr.write_bytes(b'derivation { name = "tabs"; system = "x86_64-linux"; builder = "/bin/b\\tsh"; '
                     b'args = [ "-c" "a\\tb\\t" ]; v = "\\t1\\t2\\t"; w = "' + extra + b'"; }')
    path = nix.instantiate(expr)[0]
    data = Path(path).read_bytes()
    # Nix writes each tab as \t: 6 in builder, args and v, and the builder again in the env
    assert b"\t" not in data and data.count(b"\\t") == 7
    assert (b"\x01" in data) == bool(extra) and split(data).json_ready == (not extra)
    drv = parse(data, "tabs")
    assert drv.builder == b"/bin/b\tsh"
    assert drv.args == (b"-c", b"a\tb\t")
    assert drv.env_get(b"v") == b"\t1\t2\t"
    shown = _nix(nix, "nix", "show-derivation", path).stdout
    fields = json.loads(shown)[path]
    assert fields["builder"] == "/bin/b\tsh" and fields["args"] == ["-c", "a\tb\t"]
    assert fields["env"]["v"] == "\t1\t2\t"
    assert print_drv(drv) == data
    assert buildref("drv", "show", path).stdout == shown
    assert json.loads(buildref("drv", "verify", "--json", path).stdout)[0]["ok"]
