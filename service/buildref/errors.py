"""Errors meant for people: every message starts with ``error:``, and every error has a kind that
the transports map, in one place each, to a JSON-RPC code or an HTTP status."""

from __future__ import annotations

import errno
import json
from enum import Enum

# Reasons a read can fail that say nothing about what is read: the process or the machine is out of
# something for the moment (descriptors, memory, buffers) or the device had a fault. Asking again
# later may succeed, so what failed this way is retried, never recorded as the answer.
TRANSIENT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.EIO, errno.ENOMEM, errno.EAGAIN,
                              errno.EINTR, errno.ENOBUFS})


class Kind(Enum):
    """What went wrong, as a caller can act on it."""

    INVALID = "invalid"  # the request (or input, or config) is wrong; asking again will not help
    NOT_FOUND = "not_found"  # a well-formed request for something buildref does not know
    FORBIDDEN = "forbidden"  # the caller may not do this
    UNAVAILABLE = "unavailable"  # buildref, or something it depends on, cannot answer now
    INTERNAL = "internal"  # a bug


class BuildrefError(Exception):
    """Base of every error buildref reports; ``str()`` gives the one-line message."""

    kind = Kind.INVALID

    def __str__(self) -> str:
        return f"error: {self.args[0] if self.args else 'unknown failure'}"


class BadHash(BuildrefError):
    """A hash string in none of the forms Nix accepts."""


class BadStorePath(BuildrefError):
    """A store path or store path name that Nix would reject."""


class BadDerivation(BuildrefError):
    """A .drv file that is not a well-formed derivation."""


class BadArchive(BuildrefError):
    """A file system object that cannot be put in a NAR."""


class BadLockFile(BuildrefError):
    """A flake.lock this version of buildref cannot read."""


class GitError(BuildrefError):
    """A repository or revision that cannot be read."""


class UnknownRevision(GitError):
    """A revision that does not name a commit in the repository."""

    kind = Kind.NOT_FOUND


class UnknownRepository(GitError):
    """A repository that is neither configured nor recorded nor a readable path."""

    kind = Kind.NOT_FOUND


class NotFound(BuildrefError):
    """Something the index does not hold (a store path no recorded build produced, ...)."""

    kind = Kind.NOT_FOUND


class UnknownMethod(NotFound):
    """A request for an operation that does not exist: the client's mistake, as a bad parameter."""


def clients_mistake(error: BuildrefError) -> bool:
    """Whether ``error`` says the request was wrong (logged as a bad query), not the service."""
    return error.kind is Kind.INVALID or isinstance(error, UnknownMethod)


class Forbidden(BuildrefError):
    """A request the caller is not allowed to make (another user's repository, ...)."""

    kind = Kind.FORBIDDEN


class BadConfig(BuildrefError):
    """A configuration file or option the service cannot run with."""


class BadRequest(BuildrefError):
    """A hook event or query that does not follow the protocol."""


class ServiceUnavailable(BuildrefError):
    """The service, or something it needs, cannot be reached or did not answer."""

    kind = Kind.UNAVAILABLE


class CommandFailed(BuildrefError):
    """A command that exited non-zero: the message is the exact command line and its status."""

    kind = Kind.UNAVAILABLE


class StorageError(BuildrefError):
    """The index could not be read or written (a full disk, a lost connection)."""

    kind = Kind.UNAVAILABLE


class Transient(BuildrefError):
    """A read that failed for a reason of the moment (:data:`TRANSIENT_ERRNOS`): what needed it is
    retried later, not failed."""

    kind = Kind.UNAVAILABLE


def transient(e: OSError) -> bool:
    return e.errno in TRANSIENT_ERRNOS


class IndexLost(StorageError):
    """The index's file was deleted or replaced under the running service: what it commits from
    then on would be gone at the next start, so nothing more is acknowledged and the service stops
    (the hook spools; a restarted service records the spooled events in a fresh index)."""


class StateDirInUse(BuildrefError):
    """Another service holds the state directory (two would write one spool and one index)."""

    kind = Kind.UNAVAILABLE


class InternalError(BuildrefError):
    """A bug: the caller hears of it and the service goes on."""

    kind = Kind.INTERNAL


class BadNarInfo(BuildrefError):
    """A ``.narinfo`` or ``nix-cache-info`` file that Nix would reject as corrupt."""


class BadSigningKey(BuildrefError):
    """A binary cache public or secret key that is not ``name:base64`` of the right size."""


def quoted(text: str, limit: int = 80) -> str:
    """``text`` quoted for an error message, cut to ``limit`` characters where it is longer — and
    then said to be: a message never echoes more than a short prefix of what a client sent."""
    if len(text) <= limit:
        return f"'{text}'"
    return f"'{text[:limit]}…' ({len(text)} characters)"


MAX_MESSAGE = 600  # bytes of an error message in an answer, as JSON: never much of a request echoed


def bounded(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message`` cut so that its JSON (escapes included) stays within ``limit`` bytes; a cut
    message says so. Every answer's error passes through here: whatever a message quotes, the
    answer stays short."""
    if len(json.dumps(message)) <= limit:
        return message
    mark = "… (cut)"
    room = limit - len(json.dumps(mark))
    kept = []
    for char in message:
        room -= len(json.dumps(char)) - 2
        if room < 0:
            break
        kept.append(char)
    return "".join(kept) + mark


def error_of_kind(kind: Kind, message: str) -> BuildrefError:
    """An error of ``kind`` with a message already in ``error: ...`` form (as a client receives it)."""
    cls = {Kind.INVALID: BuildrefError, Kind.NOT_FOUND: NotFound, Kind.FORBIDDEN: Forbidden,
           Kind.UNAVAILABLE: ServiceUnavailable, Kind.INTERNAL: InternalError}[kind]
    return cls(message.removeprefix("error: "))
