"""The NixOS module and the flake: every .nix file parses, and the module, evaluated by the real Nix
with small stand-ins for the lib functions and pkgs attributes it uses (tests/nix/module-eval.nix),
wires the hook, the sockets and the service the way buildref expects them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from buildref.config import parse_config
from helpers import Nix

ROOT = Path(__file__).resolve().parent.parent
HOOK_SOURCE = (ROOT / "service" / "buildref" / "hook.py").read_text()


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.nix")
                                        if ".venv" not in p.parts))
def test_every_nix_file_parses(nix: Nix, path: str) -> None:
    nix.run("nix-instantiate", "--parse", str(ROOT / path))


def evaluate(nix: Nix, **args: str) -> dict[str, Any]:
    argv = ["nix-instantiate", "--read-write-mode", "--eval", "--strict", "--json",
            str(ROOT / "tests" / "nix" / "module-eval.nix")]
    for name, value in args.items():
        argv += ["--arg", name, value]
    result: dict[str, Any] = json.loads(nix.run(*argv))
    return result


def test_module_wires_hook_sockets_and_service(nix: Nix, tmp_path: Path) -> None:
    result = evaluate(nix, repositories='[ { name = "app"; path = "/srv/app"; } ]',
                      settings='{ log.level = "debug"; }')
    options = {"enable", "package", "settings", "repositories", "hookSocket", "querySocket"}
    assert options <= set(result["options"])
    config = result["config"]

    # the hook: the package's hook.py with interpreter, socket and spool baked in. Every pattern
    # the module replaces must exist in the hook, or the build of the module's hook would fail.
    script = Path(config["nix"]["settings"]["post-build-hook"]).read_text()
    assert "/lib/python3.11/site-packages/buildref/hook.py" in script
    patterns = [part.split("' '")[0].lstrip("'") for part in script.split("--replace-fail ")[1:]]
    assert len(patterns) == 3
    for pattern in patterns:
        assert pattern in HOOK_SOURCE, pattern

    # the sockets systemd hands over are the ones the service asks for (LISTEN_FDNAMES)
    sockets = config["systemd"]["sockets"]
    hook, query = sockets["buildref-hook"]["socketConfig"], sockets["buildref-query"]["socketConfig"]
    assert (hook["FileDescriptorName"], hook["SocketMode"], hook["SocketUser"]) == ("hook", "0600", "root")
    assert (query["FileDescriptorName"], query["SocketMode"]) == ("query", "0666")
    assert hook["Service"] == query["Service"] == "buildref.service"

    service = config["systemd"]["services"]["buildref"]
    unit = service["serviceConfig"]
    assert unit["Type"] == "notify" and unit["User"] == "buildref"
    assert unit["StateDirectory"].startswith("buildref")
    assert unit["ProtectSystem"] == "strict" and unit["NoNewPrivileges"] and unit["PrivateTmp"]
    assert unit["RestrictAddressFamilies"] == ["AF_UNIX"]
    assert unit["ReadOnlyPaths"] == ["/srv/app"]
    assert set(service["requires"]) == {"buildref-hook.socket", "buildref-query.socket"}

    # the generated config is one the service accepts, with the same paths as the units
    exec_start = unit["ExecStart"].split()
    assert exec_start[1:3] == ["serve", "--config"]
    settings = json.loads(Path(exec_start[3]).read_text())
    parsed = parse_config(settings)
    assert parsed.hook.path == hook["ListenStream"] and parsed.query.path == query["ListenStream"]
    assert parsed.state_dir == "/var/lib/buildref" and parsed.spool_dir == "/var/lib/buildref/spool"
    assert parsed.log_level == "debug"  # the user's settings are kept
    assert [(r.name, r.path, r.url) for r in parsed.repositories] == [("app", "/srv/app", None)]


def test_module_opens_the_network_only_for_mirrors_and_nothing_when_disabled(nix: Nix) -> None:
    mirrored = evaluate(nix, repositories='[ { name = "a"; path = "/srv/a"; url = "file:///srv/up"; } ]')
    unit = mirrored["config"]["systemd"]["services"]["buildref"]["serviceConfig"]
    assert unit["RestrictAddressFamilies"] == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert evaluate(nix, enable="false")["config"] == {}


def test_hook_with_the_modules_substitutions_still_works(tmp_path: Path) -> None:
    """What the module's substitute produces, done here: the hook with other paths baked in runs,
    and uses them when no environment says otherwise."""
    socket_path, spool = tmp_path / "other.sock", tmp_path / "other-spool"
    text = (HOOK_SOURCE
            .replace("#!/usr/bin/python3 -IS", f"#!{sys.executable} -IS")
            .replace('DEFAULT_SOCKET = "/run/buildref/hook.sock"', f'DEFAULT_SOCKET = "{socket_path}"')
            .replace('DEFAULT_SPOOL = "/var/lib/buildref/spool"', f'DEFAULT_SPOOL = "{spool}"'))
    hook = tmp_path / "hook"
    hook.write_text(text)
    hook.chmod(0o755)
    proc = subprocess.run([str(hook)], env={"DRV_PATH": "/nix/store/x.drv"}, capture_output=True, check=False)
    assert proc.returncode == 0
    assert f"spooled {spool}/" in proc.stderr.decode()
    assert len(list(spool.glob("*.json"))) == 1
