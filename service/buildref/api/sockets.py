"""Unix sockets: the one place that creates, inherits, serves and connects them.

Server side: sockets handed over by systemd (``LISTEN_FDS``/``LISTEN_FDNAMES``) or created here with
their mode, ``sd_notify`` written straight to ``NOTIFY_SOCKET``, and a line server with a size limit
and an idle timeout. Client side: one request line, one answer line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import select
import socket
import stat
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from buildref.errors import BadConfig, ServiceUnavailable

MAX_LINE = 1 << 20  # bytes; a longer line is refused, not buffered
ACCEPT_BURST = 16  # connections accepted at one wake-up (asyncio's 100 would each take a descriptor)
ACCEPT_RETRY = 0.05  # seconds before accepting again when the process is out of descriptors
EVICTABLE_AFTER = 1.0  # seconds idle before a connection may be closed to make room for another

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
LineHandler = Callable[[bytes, Peer], Coroutine[Any, Any, bytes | None]]
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


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How many connections one socket keeps open: in all, and per uid (None: no per-uid limit)."""

    total: int
    per_uid: int | None = None


class Log(Protocol):
    def info(self, event: str, **fields: Any) -> Any: ...

    def warning(self, event: str, **fields: Any) -> Any: ...


class _Read(Enum):
    LINE = "line"  # a whole line
    LAST = "last"  # the stream ended after a last line with no newline
    END = "end"  # the stream ended
    TOO_LONG = "too long"
    GONE = "gone"  # the connection was reset


@dataclass(slots=True)
class _Connection:
    peer: Peer
    sock: socket.socket
    task: asyncio.Task[None] | None = None
    idle_since: float | None = None  # None: a request of it is running (or it has not started)


def _hung_up(sock: socket.socket | None) -> bool:
    """Whether the peer closed its end entirely (POLLHUP), not only its writing half: a client
    that shut down writing after its request still reads the answer."""
    if sock is None:
        return False
    poller = select.poll()
    try:
        poller.register(sock.fileno(), select.POLLIN)
        return any(events & select.POLLHUP for _, events in poller.poll(0))
    except (OSError, ValueError):  # closed meanwhile
        return True


async def _read(reader: asyncio.StreamReader) -> tuple[_Read, bytes]:
    try:
        return _Read.LINE, await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as e:
        # a last line without its newline still counts
        return (_Read.LAST, e.partial) if e.partial.strip() else (_Read.END, b"")
    except asyncio.LimitOverrunError:
        return _Read.TOO_LONG, b""
    except (ConnectionError, OSError):
        return _Read.GONE, b""


class LineServer:
    """Serves connections on one listening socket: each line gets ``handle``'s answer, in order.

    - A line over :data:`MAX_LINE` gets ``too_long``'s answer and the connection is closed; so is
      a connection idle for ``idle_timeout`` seconds.
    - With ``cancel_when_gone``, each request runs as a task while the next line is read, and a
      client that closes its connection before its answer has its request cancelled (work stops
      when its client goes); a client that only shuts down its writing half still gets its
      answers. Without (the hook socket: an event is committed whoever waits), each line is
      answered before the next is read.
    - At most ``limits`` connections are open. One over a limit closes the longest-idle connection
      of the same uid (of the uid with most connections, for the total limit) if it has been idle
      for :data:`EVICTABLE_AFTER`; else the new one gets ``refuse``'s line (or none) and is closed
      at once. Connections are accepted here, at most :data:`ACCEPT_BURST` at a time, so that one
      refused costs a few system calls and never more descriptors than the budget allows.
    - Every connection is a tracked task, so shutdown can let them finish, then cancel what is
      left, before anything they use is closed.
    """

    def __init__(self, name: str, handle: LineHandler, too_long: TooLongHandler, *, idle_timeout: float,
                 limits: ConnectionLimits, log: Log, refuse: Callable[[str], bytes] | None = None,
                 cancel_when_gone: bool = True) -> None:
        self._name = name
        self._handle = handle
        self._too_long = too_long
        self._idle_timeout = idle_timeout
        self._limits = limits
        self._log = log
        self._refuse = refuse
        self._cancel_when_gone = cancel_when_gone
        self._listener: socket.socket | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._connections: dict[asyncio.Task[None], _Connection] = {}
        self._per_uid: Counter[int] = Counter()
        # idle connections per uid, longest idle first (dicts keep insertion order)
        self._idle: dict[int, dict[asyncio.Task[None], _Connection]] = {}
        self._quiet: dict[str, tuple[float, int]] = {}  # event -> (logged last at, not logged since)

    @property
    def active(self) -> int:
        return len(self._connections)

    async def start(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._listener = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept)

    def stop_accepting(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()  # clients fail fast (the hook spools) rather than wait
            self._listener = None

    async def drain(self, grace: float) -> int:
        """Wait up to ``grace`` seconds for open connections, then cancel the rest; how many were."""
        if self._connections:
            await asyncio.wait(set(self._connections), timeout=grace)
        left = dict(self._connections)
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(set(left))
        for conn in left.values():  # one cancelled before it started never closed its socket
            conn.sock.close()
        return len(left)

    def _note(self, event: str, **fields: Any) -> None:
        """A warning at most once a second per kind: a client opening connections in a loop must
        not turn into a log line (written on the loop) per connection."""
        now = time.monotonic()
        last, unlogged = self._quiet.get(event, (-1.0, 0))
        if now - last < 1.0:
            self._quiet[event] = (last, unlogged + 1)
            return
        self._quiet[event] = (now, 0)
        self._log.warning(event, socket=self._name, **fields, **({"more": unlogged} if unlogged else {}))

    # -- accepting, within the limits

    def _accept(self) -> None:
        listener = self._listener
        for _ in range(ACCEPT_BURST):
            if listener is None or listener.fileno() < 0:
                return
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    continue  # that one connection failed (ECONNABORTED ...)
                # out of descriptors after all: try again shortly, not after asyncio's second
                self._note("cannot accept", error=f"error: {e.strerror}")
                loop = asyncio.get_running_loop()
                loop.remove_reader(listener.fileno())
                self._retry = loop.call_later(ACCEPT_RETRY, self._resume)
                return
            self._admit_socket(sock)

    def _resume(self) -> None:
        self._retry = None
        if self._listener is not None:
            asyncio.get_running_loop().add_reader(self._listener.fileno(), self._accept)

    def _admit_socket(self, sock: socket.socket) -> None:
        try:
            peer = peer_of(sock)
        except OSError:  # gone before it could be asked who it is
            sock.close()
            return
        uid = peer.uid
        refusal = self._admit(uid)
        if refusal is not None:
            self._note("connection refused", uid=uid, error=f"error: {refusal}")
            if self._refuse is not None:
                with contextlib.suppress(OSError):  # a short line fits the socket's buffer
                    sock.send(self._refuse(f"error: {refusal}"), socket.MSG_DONTWAIT)
            sock.close()
            return
        sock.setblocking(False)
        conn = _Connection(peer, sock)
        task = conn.task = asyncio.get_running_loop().create_task(self._run(conn))
        self._connections[task] = conn
        self._per_uid[uid] += 1

    def _idle_of(self, uid: int) -> dict[asyncio.Task[None], _Connection]:
        return self._idle.setdefault(uid, {})

    def _set_idle(self, conn: _Connection, idle: bool) -> None:
        assert conn.task is not None
        conn.idle_since = time.monotonic() if idle else None
        waiting = self._idle_of(conn.peer.uid)
        waiting.pop(conn.task, None)
        if idle:
            waiting[conn.task] = conn  # now the most recently idle

    def _forget(self, conn: _Connection) -> None:
        if conn.task is None or self._connections.pop(conn.task, None) is None:
            return
        self._per_uid[conn.peer.uid] -= 1
        if not self._per_uid[conn.peer.uid]:
            del self._per_uid[conn.peer.uid]
        waiting = self._idle_of(conn.peer.uid)
        waiting.pop(conn.task, None)
        if not waiting:
            del self._idle[conn.peer.uid]

    def _evict_idle(self, uid: int) -> bool:
        """Close ``uid``'s longest-idle connection if it has been idle long enough; whether it did."""
        waiting = self._idle.get(uid)
        if not waiting:
            return False
        victim = next(iter(waiting.values()))
        if victim.idle_since is None or time.monotonic() - victim.idle_since < EVICTABLE_AFTER:
            return False
        self._forget(victim)
        assert victim.task is not None
        victim.task.cancel()
        self._note("idle connection closed to make room", uid=uid)
        return True

    def _admit(self, uid: int) -> str | None:
        """Make room for a connection of ``uid``; why not, when there is none."""
        per_uid = self._limits.per_uid
        if per_uid is not None and self._per_uid[uid] >= per_uid and not self._evict_idle(uid):
            return f"too many connections: uid {uid} has {per_uid} open, none idle (the limit); try again"
        if len(self._connections) >= self._limits.total:
            # room is made at the expense of whoever holds the most connections
            for holder, _ in self._per_uid.most_common():
                if self._evict_idle(holder):
                    break
            else:
                return f"too many connections: {self._limits.total} open, none idle (the limit); try again"
        return None

    # -- serving

    async def _run(self, conn: _Connection) -> None:
        try:
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader(limit=MAX_LINE, loop=loop)
            protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock=conn.sock)
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            await self._serve(conn, conn.peer, reader, writer)
        finally:
            self._forget(conn)

    async def _answer(self, writer: asyncio.StreamWriter, reply: bytes | None) -> bool:
        if reply is None:
            return False
        writer.write(reply)
        await writer.drain()
        return True

    async def _serve(self, conn: _Connection, peer: Peer, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        ahead: asyncio.Task[tuple[_Read, bytes]] | None = None  # the next line, read during a request
        try:
            while True:
                self._set_idle(conn, True)
                try:
                    async with asyncio.timeout(self._idle_timeout):
                        kind, line = await (ahead if ahead is not None else _read(reader))
                except TimeoutError:
                    self._note("connection", error=f"closed a connection idle for {self._idle_timeout:.0f} s")
                    return
                ahead = None
                if kind is _Read.TOO_LONG:
                    await self._answer(writer, await self._too_long())
                    return
                if kind in (_Read.END, _Read.GONE):
                    return
                self._set_idle(conn, False)
                if not self._cancel_when_gone:  # nothing to watch for meanwhile: the request inline
                    reply = await self._handle(line, peer)
                else:
                    if kind is _Read.LINE:
                        ahead = asyncio.create_task(_read(reader))
                    reply = await self._request(line, peer, ahead, writer)
                if not await self._answer(writer, reply) or kind is _Read.LAST:
                    return
        except (ConnectionError, OSError) as e:
            self._note("connection", error=f"connection dropped: {e}")
        finally:
            if ahead is not None:
                ahead.cancel()
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _request(self, line: bytes, peer: Peer, ahead: asyncio.Task[tuple[_Read, bytes]] | None,
                       writer: asyncio.StreamWriter) -> bytes | None:
        """The answer to one line; None when its client left before it (the request cancelled)."""
        started = time.monotonic()
        handler = asyncio.create_task(self._handle(line, peer))
        try:
            if ahead is not None:
                await asyncio.wait((handler, ahead), return_when=asyncio.FIRST_COMPLETED)
                if not handler.done():
                    kind, _ = ahead.result()
                    sock = writer.get_extra_info("socket")
                    if kind is _Read.GONE or (kind is _Read.END and _hung_up(sock)):
                        handler.cancel()
                        await asyncio.wait((handler,))
                        self._log.warning("request cancelled: client left", socket=self._name, uid=peer.uid,
                                          ms=round((time.monotonic() - started) * 1000, 1))
                        return None
            # a line read ahead, or a client that only stopped writing: it waits for its answer
            return await handler
        finally:
            if not handler.done():  # this connection was cancelled (shutdown): so is its request
                handler.cancel()
                with contextlib.suppress(BaseException):
                    await handler


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard one (systemd's ``LimitNOFILE``, or the
    login's); the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else target
    with contextlib.suppress(ValueError, OSError):  # above the kernel's nr_open: keep what we have
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


# Descriptors kept whatever clients do: 64 for the service's own files (the database, libgit2's pack
# files — git/source.py bounds them —, the watchers' inotify, a subprocess's pipes, the .drv and
# store files the indexer reads), and one burst of accepted connections per socket before they are
# counted: ACCEPT_BURST each for the hook and query sockets, api/http.ACCEPT_BURST for HTTP.
RESERVED_FDS = 128


@dataclass(frozen=True, slots=True)
class FdBudget:
    """The connections each socket may hold, so that together they fit the descriptors the
    process has and the hook socket can always accept."""

    fds: int
    hook: ConnectionLimits
    query: ConnectionLimits
    http: int


def fd_budget(fds: int, hook: int, query: int, query_per_uid: int, http: int) -> FdBudget:
    """The configured limits, lowered where they would not fit ``fds`` descriptors: the hook
    socket's first (a quarter of what is not reserved, at most), then HTTP's, then the query
    socket's from what remains."""
    spare = max(fds - RESERVED_FDS, 8)
    hook_n = min(hook, max(1, spare // 4))
    http_n = min(http, max(1, spare // 4)) if http else 0
    query_n = min(query, max(1, spare - hook_n - http_n))
    return FdBudget(fds, ConnectionLimits(hook_n), ConnectionLimits(query_n, min(query_per_uid, query_n)),
                    http_n)


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
