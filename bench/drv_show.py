"""`buildref drv show -r` vs `nix show-derivation -r` on one closure of >= 5,000 derivations.

Usage: python bench/drv_show.py [--derivations N] [--repeat R]
Prints the median wall time of each and their ratio (buildref / Nix; below 1.0 is faster).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

from common import buildref_argv, nix_env, report, run, timed

META = 'description of package {} with "quotes", a backslash \\ and a tab:\t.'
SCRIPT = ("set -e; for f in $srcs; do echo $f; done; configurePhase() { echo configuring; }; "
          "buildPhase() { local x=1; while [ $x -lt 10 ]; do x=$((x+1)); done; }; "
          "installPhase() { mkdir -p $out/bin; echo '#!/bin/sh' > $out/bin/tool; }; ") * 6


def _nix(text: str) -> str:
    return json.dumps(text).replace("${", "\\${")


def expression(count: int, seed: int) -> str:
    """Layers of derivations, each using a few from the layer below, like a package set: the
    top derivation's closure holds all of them."""
    rng = random.Random(seed)
    width = 100
    lines = ["let"]
    for i in range(count):
        layer = i // width
        deps = []
        if layer:
            below = range((layer - 1) * width, min(layer * width, count))
            same = below[0] + (i % width) if below[0] + (i % width) < below.stop else below[0]
            deps = sorted({same, *rng.sample(list(below), min(2, len(below)))})
        dep_text = " ".join(f"d{d}" for d in deps)
        outputs = '"out" "dev"' if i % 3 == 0 else '"out"'
        lines.append(
            f"  d{i} = derivation {{ name = \"pkg{i}-1.{i % 7}\"; system = \"x86_64-linux\"; "
            f"builder = \"/bin/sh\"; args = [ \"-e\" \"-c\" \"genericBuild\" ]; outputs = [ {outputs} ]; "
            f"buildInputs = [ {dep_text} ]; script = {_nix(SCRIPT)}; version = \"{i}\"; "
            f"meta = {_nix(META.format(i))}; }};"
        )
    last = range((count - 1) // width * width, count)
    lines.append("in derivation { name = \"top\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; "
                 f"all = [ {' '.join(f'd{i}' for i in last)} ]; }}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--derivations", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = nix_env(home)
        nix_file = home / "set.nix"
        nix_file.write_text(expression(args.derivations, 1))
        top = run(["nix-instantiate", str(nix_file)], env).decode().strip()
        nix_time, nix_out = timed(["nix", "show-derivation", "-r", top], env, repeat=args.repeat)
        ours_time, ours_out = timed(buildref_argv("drv", "show", "-r", top), env, repeat=args.repeat)
        if ours_out != nix_out:
            raise SystemExit("buildref drv show -r printed something other than nix show-derivation -r")
        count = nix_out.count(b'.drv": {')
        report(f"drv show -r ({count} derivations)", ours_time, nix_time, "nix")
        verify_time, _ = timed(buildref_argv("drv", "verify", "-r", top), env, repeat=args.repeat)
        print(f"{'drv verify -r (same closure)':<42} buildref {verify_time * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
