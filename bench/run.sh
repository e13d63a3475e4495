#!/usr/bin/env bash
# Run every benchmark against real Nix (or the bare interpreter) on the same inputs; prints ratios.
source "$(dirname "$0")/../tests/bootstrap.sh"
cd "$ROOT/bench"
python drv_show.py "$@"
python git_hash.py "$@"
python service.py
python lookup.py
python lookup.py --backend postgres
python fleet.py
python cache_presence.py
python upload.py
python attack.py
