"""The service's TOML configuration (``buildref serve --config FILE``): every key optional, with
defaults for a system install, checked once at start so a typo fails loudly instead of silently."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from typing import Any

from buildref.errors import BadConfig
from buildref.nix.storepath import DEFAULT_STORE_DIR
from buildref.store import check_url

DEFAULT_STATE_DIR = "/var/lib/buildref"
DEFAULT_HOOK_SOCKET = "/run/buildref/hook.sock"
DEFAULT_QUERY_SOCKET = "/run/buildref/query.sock"


DEFAULT_HOOK_CONNECTIONS = 256
DEFAULT_QUERY_CONNECTIONS = 256
DEFAULT_QUERY_CONNECTIONS_PER_UID = 32
DEFAULT_HTTP_CONNECTIONS = 256
DEFAULT_UPLOAD_BATCH = 128
DEFAULT_UPLOAD_MAX_BACKOFF = 3600.0


@dataclass(frozen=True, slots=True)
class SocketConfig:
    path: str
    mode: int
    # open connections, in all and per uid (the query socket); lowered at start to fit the
    # process's open-file limit (RLIMIT_NOFILE), the hook socket's first
    max_connections: int = DEFAULT_QUERY_CONNECTIONS
    max_connections_per_uid: int = DEFAULT_QUERY_CONNECTIONS_PER_UID


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """``[http]``: the read-only HTTP API and metrics; off unless ``listen`` is set."""

    host: str  # an IP address, or a host name (every address it has at start is listened on)
    port: int
    max_connections: int = DEFAULT_HTTP_CONNECTIONS  # open connections; more are answered 503 and closed

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Repository:
    """A repository the service reads: configured, or recorded by someone. ``owner``: the user
    whose rights bound what may be read there (a repository a user recorded); None when the
    service may read all of it (configured, or recorded by root)."""

    name: str
    path: str
    url: str | None = None
    owner: int | None = None


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """One ``[[cache]]``: a binary cache checked for presence, and the keys whose signatures count."""

    url: str
    public_keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class UploadConfig:
    """``[upload]``: where every build's outputs are copied (any ``nix copy --to`` store URI)."""

    to: str
    batch: int = DEFAULT_UPLOAD_BATCH  # paths per `nix copy`
    max_backoff: float = DEFAULT_UPLOAD_MAX_BACKOFF  # seconds at most between two tries of a failing path


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one request and one user can make the service do (``[limits]``)."""

    query_seconds: float = 30.0  # one query, its git work included
    record_seconds: float = 600.0  # one ``record``
    user_requests: int = 4  # requests one user (not root) may have running at once
    user_repositories: int = 32  # repositories one user (not root) may have recorded
    user_rows: int = 500_000  # index rows (revisions, ref moves, directories) of one user's repositories
    min_free_mb: int = 256  # below this much free space for the index, only builds are recorded


@dataclass(frozen=True, slots=True)
class Config:
    state_dir: str = DEFAULT_STATE_DIR
    store_dir: str = DEFAULT_STORE_DIR
    database: str = f"sqlite://{DEFAULT_STATE_DIR}/buildref.db"
    hook: SocketConfig = SocketConfig(DEFAULT_HOOK_SOCKET, 0o600, DEFAULT_HOOK_CONNECTIONS)
    spool_dir: str = f"{DEFAULT_STATE_DIR}/spool"
    query: SocketConfig = SocketConfig(DEFAULT_QUERY_SOCKET, 0o666)
    flake_locks: tuple[str, ...] = ()
    repositories: tuple[Repository, ...] = field(default=())
    log_format: str = "console"  # or "json"
    log_level: str = "info"
    nix_bin_dir: str = ""  # where nix lives; "" means PATH
    idle_timeout: float = 10.0  # seconds a client may stay connected without sending a whole line
    http: HttpConfig | None = None  # the HTTP API: off unless configured
    limits: Limits = Limits()
    caches: tuple[CacheConfig, ...] = ()
    upload: UploadConfig | None = None
    builder: str = ""  # recorded with each build; parse_config fills in the host name

    @property
    def inbox(self) -> str:
        """The local SQLite file that holds the events (and, without PostgreSQL, the index)."""
        return os.path.join(self.state_dir, "buildref.db")


_TOP_KEYS = {"state_dir", "store_dir", "database", "flake_locks", "hook", "query", "repository", "log",
             "nix_bin_dir", "idle_timeout", "http", "limits",
             "cache", "upload", "builder"}
MAX_BUILDER = 255


def _take(table: dict[str, Any], key: str, kind: type, where: str, default: Any) -> Any:
    value = table.get(key, default)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BadConfig(f"{where}{key}: expected {kind.__name__}, got {value!r}")
    return value


def _positive(table: dict[str, Any], key: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
        raise BadConfig(f"{key}: expected a number of seconds (0 < t <= 3600), got {value!r}")
    return float(value)


def _int_in(table: dict[str, Any], key: str, where: str, default: int, low: int, high: int) -> int:
    value = _take(table, key, int, where, default)
    if not low <= value <= high:
        raise BadConfig(f"{where}{key}: expected {low} to {high}, got {value!r}")
    return int(value)


def _connections(table: dict[str, Any], key: str, where: str, default: int) -> int:
    return _int_in(table, key, where, default, 1, 100_000)


def _mode(table: dict[str, Any], where: str, default: int) -> int:
    value = table.get("mode", default)
    if isinstance(value, str):
        try:
            value = int(value, 8)
        except ValueError:
            raise BadConfig(f"{where}mode: expected an octal string like \"0600\", got {value!r}") from None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0o777:
        raise BadConfig(f"{where}mode: expected a permission mode like \"0600\", got {value!r}")
    return value


def _builder(data: dict[str, Any]) -> str:
    """The ``builder`` name: this host's name unless set; printable, without spaces."""
    value = _take(data, "builder", str, "", "") or socket.gethostname()
    if not 0 < len(value) <= MAX_BUILDER or not value.isprintable() or any(c.isspace() for c in value):
        raise BadConfig(f"builder: expected a name of 1 to {MAX_BUILDER} printable characters without"
                        f" spaces, got {value[:60]!r}")
    return value


def _unknown(table: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise BadConfig(f"unknown config key {where}{extra[0]}")


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")


def _listen(text: str) -> tuple[str, int]:
    """``ADDRESS:PORT``: an IPv4 address or a host name, or an IPv6 address in brackets."""
    usage = 'expected "ADDRESS:PORT", like "127.0.0.1:8745", "[::1]:8745" or "localhost:8745"'
    bracketed = text.startswith("[")
    if bracketed:
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
        if ":" in host:
            raise BadConfig(f'http.listen: put an IPv6 address in brackets, like "[::1]:8745"; got {text!r}')
    if not sep or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise BadConfig(f"http.listen: {usage} (a port from 1 to 65535), got {text!r}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if bracketed or len(host) > 253 or not _HOST_NAME.fullmatch(host):
            raise BadConfig(f"http.listen: {usage}, got {text!r}") from None
        return host, int(port)
    if bracketed != (address.version == 6):
        raise BadConfig(f"http.listen: {usage}, got {text!r}")
    return str(address), int(port)


def _http(data: dict[str, Any]) -> HttpConfig | None:
    if "http" not in data:
        return None
    table = _take(data, "http", dict, "", None)
    _unknown(table, {"listen", "max_connections"}, "http.")
    if "listen" not in table:
        raise BadConfig("http.listen: required in [http] (the HTTP API is off without an [http] table)")
    host, port = _listen(_take(table, "listen", str, "http.", None))
    return HttpConfig(host, port, _connections(table, "max_connections", "http.", DEFAULT_HTTP_CONNECTIONS))


def _limits(data: dict[str, Any]) -> Limits:
    table = _take(data, "limits", dict, "", {})
    defaults = Limits()
    _unknown(table, set(Limits.__dataclass_fields__), "limits.")
    seconds = {}
    for key in ("query_seconds", "record_seconds"):
        value = table.get(key, getattr(defaults, key))
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 86400:
            raise BadConfig(f"limits.{key}: expected a number of seconds (0 < t <= 86400), got {value!r}")
        seconds[key] = float(value)
    def count(key: str, low: int, high: int) -> int:
        return _int_in(table, key, "limits.", getattr(defaults, key), low, high)

    return Limits(
        **seconds,
        user_requests=count("user_requests", 1, 1000),
        user_repositories=count("user_repositories", 0, 1_000_000),
        user_rows=count("user_rows", 0, 10**12),
        min_free_mb=count("min_free_mb", 0, 10**9),
    )


def _caches(data: dict[str, Any]) -> tuple[CacheConfig, ...]:
    found = []
    for i, entry in enumerate(_take(data, "cache", list, "", [])):
        where = f"cache[{i}]."
        if not isinstance(entry, dict):
            raise BadConfig(f"cache[{i}]: expected a table")
        _unknown(entry, {"url", "public_keys"}, where)
        url = _take(entry, "url", str, where, None)
        if not url.startswith(("http://", "https://", "file://")):
            raise BadConfig(f"{where}url: expected an http://, https:// or file:// binary cache, got {url!r}")
        # none is allowed (the NixOS module's default) but makes the cache useless: a narinfo
        # counts only when signed by one of them, and every answer from it says so
        keys = _take(entry, "public_keys", list, where, [])
        if not all(isinstance(k, str) for k in keys):
            raise BadConfig(f"{where}public_keys: expected a list of keys like"
                            " \"cache.example.org-1:BASE64\"")
        found.append(CacheConfig(url, tuple(keys)))
    return tuple(found)


def _upload(data: dict[str, Any]) -> UploadConfig | None:
    if "upload" not in data:
        return None
    table = _take(data, "upload", dict, "", None)
    _unknown(table, {"to", "batch", "max_backoff"}, "upload.")
    if "to" not in table:
        raise BadConfig("upload.to: required in [upload] (a `nix copy --to` store URI)")
    to = _take(table, "to", str, "upload.", None)
    if not to.strip():
        raise BadConfig("upload.to: expected a store URI like \"s3://bucket\" or \"file:///srv/cache\"")
    batch = _int_in(table, "batch", "upload.", DEFAULT_UPLOAD_BATCH, 1, 1000)
    backoff = table.get("max_backoff", DEFAULT_UPLOAD_MAX_BACKOFF)
    if isinstance(backoff, bool) or not isinstance(backoff, int | float) or not 1 <= backoff <= 86400:
        raise BadConfig(f"upload.max_backoff: expected seconds from 1 to 86400, got {backoff!r}")
    return UploadConfig(to, batch, float(backoff))


def parse_config(data: dict[str, Any]) -> Config:
    _unknown(data, _TOP_KEYS, "")
    state_dir = _take(data, "state_dir", str, "", DEFAULT_STATE_DIR).rstrip("/") or "/"
    hook = _take(data, "hook", dict, "", {})
    query = _take(data, "query", dict, "", {})
    log = _take(data, "log", dict, "", {})
    _unknown(hook, {"socket", "mode", "spool_dir", "max_connections"}, "hook.")
    _unknown(query, {"socket", "mode", "max_connections", "max_connections_per_uid"}, "query.")
    _unknown(log, {"format", "level"}, "log.")
    log_format = _take(log, "format", str, "log.", "console")
    if log_format not in ("console", "json"):
        raise BadConfig(f"log.format: expected \"console\" or \"json\", got {log_format!r}")
    log_level = _take(log, "level", str, "log.", "info").lower()
    if log_level not in ("debug", "info", "warning", "error"):
        raise BadConfig(f"log.level: expected debug, info, warning or error, got {log_level!r}")

    repos = []
    for i, entry in enumerate(_take(data, "repository", list, "", [])):
        where = f"repository[{i}]."
        if not isinstance(entry, dict):
            raise BadConfig(f"repository[{i}]: expected a table")
        _unknown(entry, {"name", "path", "url"}, where)
        name = _take(entry, "name", str, where, None)
        path = _take(entry, "path", str, where, None)
        url = entry.get("url")
        if url is not None and not isinstance(url, str):
            raise BadConfig(f"{where}url: expected str, got {url!r}")
        repos.append(Repository(name, path, url))
    names = [r.name for r in repos]
    if len(set(names)) != len(names):
        raise BadConfig("repository names must be unique")

    locks = _take(data, "flake_locks", list, "", [])
    if not all(isinstance(p, str) for p in locks):
        raise BadConfig("flake_locks: expected a list of paths")

    config = Config(
        state_dir=state_dir,
        store_dir=_take(data, "store_dir", str, "", DEFAULT_STORE_DIR).rstrip("/"),
        database=_take(data, "database", str, "", f"sqlite://{state_dir}/buildref.db"),
        hook=SocketConfig(_take(hook, "socket", str, "hook.", DEFAULT_HOOK_SOCKET),
                          _mode(hook, "hook.", 0o600),
                          _connections(hook, "max_connections", "hook.", DEFAULT_HOOK_CONNECTIONS)),
        spool_dir=_take(hook, "spool_dir", str, "hook.", f"{state_dir}/spool"),
        query=SocketConfig(_take(query, "socket", str, "query.", DEFAULT_QUERY_SOCKET),
                           _mode(query, "query.", 0o666),
                           _connections(query, "max_connections", "query.", DEFAULT_QUERY_CONNECTIONS),
                           _connections(query, "max_connections_per_uid", "query.",
                                        DEFAULT_QUERY_CONNECTIONS_PER_UID)),
        flake_locks=tuple(locks),
        repositories=tuple(repos),
        log_format=log_format,
        log_level=log_level,
        nix_bin_dir=_take(data, "nix_bin_dir", str, "", ""),
        idle_timeout=_positive(data, "idle_timeout", 10.0),
        http=_http(data),
        limits=_limits(data),
        caches=_caches(data),
        upload=_upload(data),
        builder=_builder(data),
    )
    check_url(config.database)  # now rather than at first use
    return config


def load_config(path: str | None) -> Config:
    """The config in ``path``; with no path, the defaults."""
    if path is None:
        return parse_config({})
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise BadConfig(f"cannot read config '{path}': {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise BadConfig(f"config '{path}': {e}") from None
    return parse_config(data)


def client_socket(arg: str | None) -> str:
    """The query socket a client talks to: ``--socket``, else ``BUILDREF_SOCKET``, else the default."""
    return arg or os.environ.get("BUILDREF_SOCKET") or DEFAULT_QUERY_SOCKET


def client_url(arg: str | None) -> str | None:
    """The HTTP API a client asks instead of the query socket: ``--url``, else ``BUILDREF_URL``."""
    return arg or os.environ.get("BUILDREF_URL") or None


def client_hook_socket(arg: str | None) -> str:
    return arg or os.environ.get("BUILDREF_HOOK_SOCKET") or DEFAULT_HOOK_SOCKET

