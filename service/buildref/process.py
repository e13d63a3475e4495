"""The one place buildref runs a subprocess: Nix, for what only Nix knows (the path a floating
content-addressed output got, the NAR hash the store records for a path) and for copying builds
to a binary cache, and git, to mirror repositories given by URL.

Each command is a small function that builds an argv, runs it through :func:`run` and parses what
it printed; a failure is reported as the exact command line and its status.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex

from buildref.errors import CommandFailed

_TIMEOUT = 30.0
_PATH_INFO_BATCH = 200  # paths per `nix path-info` (argv stays small)


async def run(argv: list[str], timeout: float = _TIMEOUT, env: dict[str, str] | None = None) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CommandFailed(f"{shlex.join(argv)} timed out after {timeout:.0f} s") from None
    if proc.returncode != 0:
        last = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise CommandFailed(f"{shlex.join(argv)} exited with status {proc.returncode}: {last[0]}")
    return out


class Nix:
    """Nix commands, from ``bin_dir`` (empty: found on PATH)."""

    def __init__(self, bin_dir: str = "") -> None:
        self._bin_dir = bin_dir

    def tool(self, name: str) -> str:
        return os.path.join(self._bin_dir, name) if self._bin_dir else name

    async def realisations(self, drv_path: str, store_dir: str) -> dict[str, tuple[str, str]]:
        """Output name → (realisation id, output path) for the built outputs of a content-addressed
        or deferred derivation, from the store's own realisation records."""
        out = await run([self.tool("nix"), "--extra-experimental-features", "nix-command ca-derivations",
                         "realisation", "info", "--json", drv_path])
        try:
            items = json.loads(out)
            found = {}
            for item in items:
                realisation_id, out_path = item["id"], item["outPath"]
                _, _, name = realisation_id.partition("!")
                if "/" not in out_path:
                    out_path = f"{store_dir}/{out_path}"
                found[name] = (realisation_id, out_path)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CommandFailed(f"nix realisation info {drv_path}: unexpected output ({e})") from None
        return found

    async def path_info(self, paths: list[str]) -> dict[str, tuple[str, int] | None]:
        """The NAR hash (SRI) and NAR size the store records for each path; None: not valid."""
        found: dict[str, tuple[str, int] | None] = {}
        for i in range(0, len(paths), _PATH_INFO_BATCH):
            batch = paths[i:i + _PATH_INFO_BATCH]
            out = await run([self.tool("nix"), "--extra-experimental-features", "nix-command", "path-info",
                             "--json", *batch])
            try:
                for item in json.loads(out):
                    valid = item.get("valid", True) and "narHash" in item
                    found[item["path"]] = (item["narHash"], int(item["narSize"])) if valid else None
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise CommandFailed(f"nix path-info: unexpected output ({e})") from None
        return found


    async def copy(self, to: str, paths: list[str], timeout: float = 3600.0) -> None:
        """``nix copy --to`` ``to`` of ``paths`` and their closures (signed when ``to`` names a
        ``secret-key``); raises :class:`CommandFailed` when Nix does."""
        await run([self.tool("nix"), "--extra-experimental-features", "nix-command", "copy", "--to", to,
                   *paths], timeout)


_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C"}


async def mirror(url: str, path: str, timeout: float = 600.0) -> None:
    """Keep a bare mirror of ``url`` at ``path``: cloned the first time, fetched (pruned) after.
    The clone is 0700 whatever the umask (git makes it 0755): the repository may be private."""
    env = {**os.environ, **_GIT_ENV}
    if os.path.isdir(path):
        await run(["git", "-C", path, "remote", "update", "--prune"], timeout, env)
    else:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        await run(["git", "clone", "--mirror", "--quiet", "--", url, path], timeout, env)
        os.chmod(path, 0o700)

