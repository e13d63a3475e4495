#!/usr/bin/python3 -IS
"""Nix's post-build-hook: hand one build event to ``buildref serve``, or spool it to disk.

Runs as ``python3 -I -S`` under the nix-daemon after every build, synchronously, so it imports only
the standard library's cheapest modules and never fails: a non-zero exit would stop every later
build. The event is delivered when the service answers a line (``ok``, or ``error: ...`` for an
event it kept as failed); otherwise it is written atomically into the spool directory.
"""

import _socket  # the socket module's enums and selectors would double the hook's start-up time
import os
import sys
import time

DEFAULT_SOCKET = "/run/buildref/hook.sock"
DEFAULT_SPOOL = "/var/lib/buildref/spool"
# A post-build hook to run after ours, in its place (exec): the one Nix would have run without
# buildref. BUILDREF_HOOK_CHAIN overrides it; empty means none.
CHAINED_HOOK = ""


def _json_string(value: str) -> str:
    # The json module costs more to import than the rest of the hook; this covers all of JSON's
    # string escapes (surrogates from undecodable environment bytes become \udcXX, as json does).
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif code < 0x20 or code > 0x7E:
            if code > 0xFFFF:
                code -= 0x10000
                out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
            else:
                out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def encode_event(drv: str, outs: list[str], t: float) -> bytes:
    items = ",".join(_json_string(o) for o in outs)
    return f'{{"v":1,"drv":{_json_string(drv)},"outs":[{items}],"t":{t!r}}}\n'.encode()


def deliver(line: bytes, path: str, timeout: float) -> str:
    """Send one event line; the service's one-line answer."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(line)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("the service closed the connection without an answer")
            reply += chunk
    finally:
        sock.close()
    return reply.decode(errors="replace").strip()


def spool(line: bytes, spool_dir: str, t: float) -> str:
    """Write the event into the spool directory: temp file, fsync, rename, fsync the directory.
    The hook runs as root and the service as its own user, which must read the file (it holds
    only store paths, readable by anyone anyway)."""
    name = f"{t:.6f}-{os.getpid()}"
    tmp = os.path.join(spool_dir, ".tmp-" + name)
    final = os.path.join(spool_dir, name + ".json")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileNotFoundError:
        os.makedirs(spool_dir, mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, final)
    dfd = os.open(spool_dir, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return final


def main() -> int:
    env = os.environ
    t = time.time()
    drv = env.get("DRV_PATH", "")
    outs = env.get("OUT_PATHS", "").split()
    line = encode_event(drv, outs, t)
    try:
        timeout = float(env.get("BUILDREF_HOOK_TIMEOUT", "1"))
    except ValueError:
        timeout = 1.0
    try:
        reply = deliver(line, env.get("BUILDREF_HOOK_SOCKET") or DEFAULT_SOCKET, timeout)
        if reply != "ok":
            sys.stderr.write(f"buildref-hook: {drv}: {reply}\n")
        return 0
    except (OSError, ValueError) as e:
        failure = e
    try:
        where = spool(line, env.get("BUILDREF_SPOOL_DIR") or DEFAULT_SPOOL, t)
        sys.stderr.write(f"buildref-hook: service unavailable ({failure}); spooled {where}\n")
    except Exception as e:  # the hook must exit 0 whatever happens, or Nix stops building
        sys.stderr.write(f"buildref-hook: LOST event for {drv}: {failure}; spooling failed: {e}\n")
    return 0


def run() -> None:
    """Console-script entry point. buildref's part ends as if it exited 0, in every case; then the
    chained hook, if any, replaces this process, so that its output and exit status are Nix's."""
    try:
        main()
    except BaseException as e:  # see the docstring
        try:  # noqa: SIM105 - contextlib costs the hook an import
            sys.stderr.write(f"buildref-hook: {e}\n")
        except BaseException:
            pass
    chained = os.environ.pop("BUILDREF_HOOK_CHAIN", CHAINED_HOOK)
    if chained:
        # Same environment (DRV_PATH, OUT_PATHS, ...), looked up in PATH as Nix does (execvp). When
        # it cannot start, Nix's own attempt would have failed with status 1 and one line: so do we.
        try:
            sys.stderr.flush()
            os.execvp(chained, [chained])
        except OSError as e:
            sys.stderr.write(f"buildref-hook: error: executing '{chained}': {e.strerror}\n")
            sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    run()
