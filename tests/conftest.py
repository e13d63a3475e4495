"""Fixtures: the real Nix, with an isolated configuration."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from helpers import Nix
from pgserver import PostgresMissing, PostgresServer
from servicectl import ServiceProcess


@pytest.fixture(scope="session")
def nix(tmp_path_factory: pytest.TempPathFactory) -> Nix:
    # Tests that need Nix fail, never skip, when it is missing: CI must install it.
    missing = [tool for tool in ("nix", "nix-instantiate", "nix-store") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"real Nix is required: {', '.join(missing)} not on PATH (apt-get install nix-bin)")
    return Nix(tmp_path_factory.mktemp("nixhome"))


@pytest.fixture(scope="session")
def system(nix: Nix) -> str:
    value = nix.eval_json("builtins.currentSystem")
    assert isinstance(value, str)
    return value


@pytest.fixture
def service() -> Iterator[ServiceProcess]:
    """A running service with no configured repository."""
    svc = ServiceProcess()
    try:
        yield svc.start()
    finally:
        svc.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL for the session (tests that need it fail, never skip, when it is missing)."""
    try:
        server = PostgresServer().start()
    except PostgresMissing as e:
        pytest.fail(str(e))
    try:
        yield server
    finally:
        server.close()
