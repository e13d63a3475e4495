#!/usr/bin/env bash
# Run every benchmark against real Nix on the same inputs; prints ratios buildref / Nix.
source "$(dirname "$0")/../tests/bootstrap.sh"
cd "$ROOT/bench"
python drv_show.py "$@"
python git_hash.py "$@"
