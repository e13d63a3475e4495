"""Upload throughput: N real builds copied to a signed file:// binary cache by the service's upload
queue (from each event's commit to its path copied, batches of ``[upload] batch``), against one
plain ``nix copy --to`` of the same paths to another cache (the floor: what Nix itself takes).

Usage: python bench/upload.py [--builds N] [--batch B]

The builds are N small derivations built once by real Nix; the service receives their events on
the hook socket (one connection each, as the hook sends them), indexes them and uploads their
outputs. The hook's ack latency during the uploads is printed too: uploads never sit on a build's
path.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import nix_env, run, start_service
from servicectl import wait_for


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--builds", type=int, default=300)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="brup", dir="/tmp"))
    env = nix_env(base / "home")
    keys = base / "keys"
    keys.mkdir()
    run(["nix-store", "--generate-binary-cache-key", "bench-1", str(keys / "sk"), str(keys / "pk")], env)
    system = run(["nix", "eval", "--raw", "--impure", "--expr", "builtins.currentSystem"], env).decode()
    expr = base / "set.nix"
    expr.write_text(f"""builtins.genList (i: derivation {{
  name = "up-${{toString i}}"; system = "{system}"; builder = "/bin/sh";
  args = [ "-c" "echo ${{toString i}} {time.time()} > $out" ];
}}) {args.builds}""")
    drvs = run(["nix-instantiate", str(expr)], env).decode().split()
    outs = run(["nix-store", "--realise", *drvs], env).decode().split()
    assert len(outs) == args.builds

    reference = base / "reference"
    start = time.perf_counter()
    run(["nix", "copy", "--to", f"file://{reference}?secret-key={keys / 'sk'}", *outs], env)
    nix_copy = time.perf_counter() - start

    cache = base / "cache"
    svc = start_service(base / "svc", upload={"to": f"file://{cache}?secret-key={keys / 'sk'}",
                                              "batch": args.batch})
    try:
        acks = []
        start = time.perf_counter()
        for drv in drvs:  # one connection and event each, as the hook sends them
            line = json.dumps({"v": 1, "drv": drv, "outs": [], "t": time.time()}).encode() + b"\n"
            t = time.perf_counter()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(str(svc.hook_socket))
                sock.sendall(line)
                answer = sock.recv(4096)
            acks.append(time.perf_counter() - t)
            if answer.strip() != b"ok":
                sys.exit(f"hook: {answer.decode(errors='replace')}")
        fed = time.perf_counter()
        wait_for(lambda: svc.call("status")["upload"]["done"] >= args.builds, timeout=600,
                 what="every path uploaded")
        uploaded = time.perf_counter() - start
        tail = time.perf_counter() - fed
        status = svc.call("status")["upload"]
    finally:
        svc.close()
    missing = [o for o in outs if not (cache / f"{Path(o).name.split('-', 1)[0]}.narinfo").is_file()]
    assert not missing, missing[:3]
    acks.sort()
    print(f"{args.builds} builds, batches of {args.batch}: uploaded by the service in {uploaded:.2f} s "
          f"(from the first hook event; {args.builds / uploaded:.0f} paths/s; {tail:.2f} s after the last),"
          f" failed {status['failed']}")
    print(f"plain nix copy of the same paths, one command:  {nix_copy:.2f} s "
          f"({args.builds / nix_copy:.0f} paths/s)   ratio {uploaded / nix_copy:.2f}")
    print(f"hook ack during the uploads: p50 {statistics.median(acks) * 1000:.1f} ms, "
          f"p99 {acks[int(len(acks) * 0.99) - 1] * 1000:.1f} ms, max {acks[-1] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
