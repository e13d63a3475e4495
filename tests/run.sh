#!/usr/bin/env bash
# The test command (README, .ci/run): installs what it needs, then lint, types and the test suite.
source "$(dirname "$0")/bootstrap.sh"
cd "$ROOT"
echo "== nix: $(nix --version)" >&2
ruff check service tests bench
mypy
python -m pytest -q "$@"
