"""Asking Nix what only Nix knows — the one place buildref runs a subprocess.

Each Nix command is a small function that builds an argv, runs it through :func:`run` and parses
what it printed. Today that is the path a floating content-addressed output got when it was built.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex

from buildref.errors import BuildrefError

_TIMEOUT = 30.0


class NixCommandFailed(BuildrefError):
    """A Nix command that exited non-zero: the message is the exact command line and its status."""


async def run(argv: list[str], timeout: float = _TIMEOUT) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise NixCommandFailed(f"{shlex.join(argv)} timed out after {timeout:.0f} s") from None
    if proc.returncode != 0:
        last = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise NixCommandFailed(f"{shlex.join(argv)} exited with status {proc.returncode}: {last[0]}")
    return out


class Nix:
    """Nix commands, from ``bin_dir`` (empty: found on PATH)."""

    def __init__(self, bin_dir: str = "") -> None:
        self._bin_dir = bin_dir

    def _tool(self, name: str) -> str:
        return os.path.join(self._bin_dir, name) if self._bin_dir else name

    async def realisations(self, drv_path: str, store_dir: str) -> dict[str, tuple[str, str]]:
        """Output name → (realisation id, output path) for the built outputs of a content-addressed
        or deferred derivation, from the store's own realisation records."""
        out = await run([self._tool("nix"), "--extra-experimental-features", "nix-command ca-derivations",
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
            raise NixCommandFailed(f"nix realisation info {drv_path}: unexpected output ({e})") from None
        return found
