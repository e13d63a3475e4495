"""Unix sockets: the one place that creates, inherits, serves and connects them.

Server side: sockets handed over by systemd (``LISTEN_FDS``/``LISTEN_FDNAMES``) or created here with
their mode, ``sd_notify`` written straight to ``NOTIFY_SOCKET``, and a line server with a size limit
and an idle timeout. Client side: one request line, one answer line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from buildref.errors import BadConfig, ServiceUnavailable

MAX_LINE = 1 << 20  # bytes; a longer line is refused, not buffered

SD_LISTEN_FDS_START = 3

@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end of a Unix socket (SO_PEERCRED): the kernel says, not the client."""

    pid: int
    uid: int
    gid: int


def peer_of(sock: socket.socket) -> Peer:
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                        struct.calcsize("3i")))
    return Peer(pid, uid, gid)


# An answer line, or None to close the connection without one.
LineHandler = Callable[[bytes, Peer], Awaitable[bytes | None]]
TooLongHandler = Callable[[], Awaitable[bytes | None]]


def inherited_sockets(environ: dict[str, str] | None = None) -> dict[str, socket.socket]:
    """Sockets passed by systemd socket activation, by name (``LISTEN_FDNAMES``); the variables are
    removed so children do not see them."""
    env = os.environ if environ is None else environ
    try:
        pid = int(env.get("LISTEN_PID", "0"))
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return {}
    if count <= 0 or pid != os.getpid():
        return {}
    names = env.get("LISTEN_FDNAMES", "").split(":")
    found = {}
    for i in range(count):
        fd = SD_LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        name = names[i] if i < len(names) and names[i] else f"fd{fd}"
        found[name] = socket.socket(fileno=fd)
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(key, None)
    return found


def listen_unix(path: str, mode: int) -> socket.socket:
    """A listening stream socket at ``path`` with permissions ``mode``; a stale socket file left by
    a killed service is replaced, anything else at that path is an error."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise BadConfig(f"cannot listen on '{path}': it exists and is not a socket")
        if _answers(path):
            raise BadConfig(f"cannot listen on '{path}': another service is listening there")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # bind creates the file with the umask applied; narrow it before anyone can connect
        old = os.umask(0o777 & ~mode)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, mode)
        sock.listen(1024)
    except OSError as e:
        sock.close()
        raise BadConfig(f"cannot listen on '{path}': {e.strerror}") from None
    return sock


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def notify(message: str) -> bool:
    """``sd_notify``: one datagram to ``NOTIFY_SOCKET`` (abstract when it starts with ``@``)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    target = "\0" + address[1:] if address.startswith("@") else address
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), target)
        except OSError:
            return False
    return True


class LineServer:
    """Serves connections on one listening socket: each line gets ``handle``'s answer. A line
    over :data:`MAX_LINE` gets ``too_long``'s answer and the connection is closed; so is a
    connection idle for ``idle_timeout`` seconds. Every connection is a tracked task, so shutdown
    can let them finish, then cancel what is left, before anything they use is closed."""

    def __init__(self, handle: LineHandler, too_long: TooLongHandler, idle_timeout: float,
                 on_error: Callable[[str], None]) -> None:
        self._handle = handle
        self._too_long = too_long
        self._idle_timeout = idle_timeout
        self._on_error = on_error
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> int:
        return len(self._connections)

    async def start(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._server = await asyncio.start_unix_server(self._connection, sock=sock, limit=MAX_LINE)

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def drain(self, grace: float) -> int:
        """Wait up to ``grace`` seconds for open connections, then cancel the rest; how many were."""
        if self._connections:
            await asyncio.wait(set(self._connections), timeout=grace)
        left = set(self._connections)
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left)
        return len(left)

    async def _answer(self, writer: asyncio.StreamWriter, reply: bytes | None) -> bool:
        if reply is None:
            return False
        writer.write(reply)
        await writer.drain()
        return True

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # a connection callback always runs in a task
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._connections.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = peer_of(writer.get_extra_info("socket"))
        try:
            while True:
                try:
                    async with asyncio.timeout(self._idle_timeout):  # no task per line, unlike wait_for
                        line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as e:
                    if e.partial.strip():  # a last line without its newline still counts
                        await self._answer(writer, await self._handle(e.partial, peer))
                    return
                except asyncio.LimitOverrunError:
                    await self._answer(writer, await self._too_long())
                    return
                except TimeoutError:
                    self._on_error(f"closed a connection idle for {self._idle_timeout:.0f} s")
                    return
                if not await self._answer(writer, await self._handle(line, peer)):
                    return
        except (ConnectionError, OSError) as e:
            self._on_error(f"connection dropped: {e}")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


def request(path: str, line: bytes, timeout: float) -> bytes:
    """Send one line to the socket at ``path`` and return the one-line answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as e:
            raise ServiceUnavailable(f"cannot reach buildref at {path}: {e.strerror or e}") from None
        try:
            sock.sendall(line)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if chunk.endswith(b"\n"):
                    break
        except TimeoutError:
            raise ServiceUnavailable(f"buildref at {path} did not answer within {timeout:.0f} s") from None
        except OSError as e:
            raise ServiceUnavailable(f"buildref at {path}: {e.strerror or e}") from None
    answer = b"".join(chunks)
    if not answer.endswith(b"\n"):
        raise ServiceUnavailable(f"buildref at {path} closed the connection without an answer")
    return answer
