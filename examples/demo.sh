#!/usr/bin/env bash
# The demo (README's first command): real Nix builds from the revisions of a git repository, then
# "which build came from this commit?" and "which commit did this store path come from?".
source "$(dirname "$0")/../tests/bootstrap.sh"
exec python "$ROOT/examples/demo.py" "$@"
