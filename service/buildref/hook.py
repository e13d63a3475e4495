#!/usr/bin/python3 -IS
"""Nix's post-build-hook: hand one build event to ``buildref serve``, or spool it to disk.

Runs as ``python3 -I -S`` under the nix-daemon after every build, synchronously, so it imports only
the standard library's cheapest modules and never fails: a non-zero exit would stop every later
build. The event is delivered when the service answers a line (``ok``, or ``error: ...`` for an
event it kept as failed); otherwise it is written atomically into the spool directory, unless that
directory could redirect root's write (see :func:`open_spool_dir`): then the event is lost, and
the hook says so in one line.
"""

import _socket  # the socket module's enums and selectors would double the hook's start-up time
import os
import sys
import time

# The NixOS module replaces these lines in its copy of the hook (keep each `NAME = "value"`).
DEFAULT_SOCKET = "/run/buildref/hook.sock"
DEFAULT_SPOOL = "/var/lib/buildref/spool"
# The user to whom the spool directory may belong besides root (the service's, on NixOS).
SERVICE_USER = ""
# A post-build hook to run after ours, in its place (exec): the one Nix would have run without
# buildref. BUILDREF_HOOK_CHAIN overrides it; empty means none.
CHAINED_HOOK = ""

DEFAULT_TIMEOUT = 1.0  # seconds
MAX_TIMEOUT = 60.0  # Nix waits for the hook before it goes on: a longer wait is a mistake
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


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


def hook_timeout(text: str | None) -> float:
    """``BUILDREF_HOOK_TIMEOUT`` in seconds. A value the socket cannot take (not a number, not
    finite, <= 0) or an absurd one (over MAX_TIMEOUT) gives the default: neither a skipped
    delivery nor a build held up without end."""
    try:
        value = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        return DEFAULT_TIMEOUT
    return value if 0 < value <= MAX_TIMEOUT else DEFAULT_TIMEOUT  # NaN fails both comparisons


def open_spool_dir(path: str, service_user: str) -> int:
    """A descriptor of the spool directory, made (mode 0700) if missing. The hook runs as root and
    on NixOS the directory belongs to the service user, who could swap it for a symlink to make
    root write anywhere: so it is opened without following a symlink, must be owned by root, this
    process's user or ``service_user``, and every later step goes through this descriptor."""
    try:
        dfd = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        os.makedirs(path, mode=0o700, exist_ok=True)
        dfd = os.open(path, _DIR_FLAGS)
    except OSError:
        if os.path.islink(path):
            raise PermissionError(f"spool directory {path} is a symlink") from None
        raise
    try:
        owner = os.fstat(dfd).st_uid
        if owner not in (0, os.geteuid()):
            import pwd  # built in; needed only for a directory that is not root's

            if not service_user or owner != pwd.getpwnam(service_user).pw_uid:
                raise PermissionError(f"spool directory {path} is owned by uid {owner}: not root, uid "
                                      f"{os.geteuid()} or the service user ({service_user or 'not set'})")
    except KeyError:
        os.close(dfd)
        raise PermissionError(f"the service user '{service_user}' does not exist") from None
    except BaseException:
        os.close(dfd)
        raise
    return dfd


def spool(line: bytes, spool_dir: str, t: float, service_user: str) -> str:
    """Write the event into the spool directory: temp file, fsync, rename, fsync the directory,
    all relative to the checked directory's descriptor and never through a symlink. The service
    runs as its own user and must read the file (it holds only store paths, readable anyway)."""
    dfd = open_spool_dir(spool_dir, service_user)
    try:
        name = f"{t:.6f}-{os.getpid()}"
        fd = os.open(".tmp-" + name, _FILE_FLAGS, 0o644, dir_fd=dfd)
        try:
            if os.write(fd, line) != len(line):
                raise OSError(f"short write of {len(line)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(".tmp-" + name, name + ".json", src_dir_fd=dfd, dst_dir_fd=dfd)
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return os.path.join(spool_dir, name + ".json")


def say(message: str) -> None:
    """One line on stderr (Nix shows it in the build log), whatever paths or errors it quotes."""
    sys.stderr.write("buildref-hook: " + message.replace("\n", "\\n") + "\n")


def main() -> int:
    env = os.environ
    t = time.time()
    drv = env.get("DRV_PATH", "")
    line = encode_event(drv, env.get("OUT_PATHS", "").split(), t)
    try:
        reply = deliver(line, env.get("BUILDREF_HOOK_SOCKET") or DEFAULT_SOCKET,
                        hook_timeout(env.get("BUILDREF_HOOK_TIMEOUT")))
    except Exception as e:  # whatever stopped the delivery, the event goes to the spool
        failure = e
    else:
        if reply != "ok":
            say(f"{drv}: {reply}")
        return 0
    try:
        where = spool(line, env.get("BUILDREF_SPOOL_DIR") or DEFAULT_SPOOL, t,
                      env.get("BUILDREF_SERVICE_USER") or SERVICE_USER)
    except BaseException as e:  # the hook must exit 0 whatever happens, or Nix stops building
        say(f"LOST event for {drv}: {failure}; spooling failed: {e}")
    else:
        say(f"service unavailable ({failure}); spooled {where}")
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
