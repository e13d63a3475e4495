# Sourced by tests/run.sh and examples/demo.sh: makes a fresh Debian machine (as root) ready for
# buildref — git, a real Nix from Debian's nix-bin, a virtualenv with buildref and its test tools —
# and exports ROOT, PATH and an isolated NIX_CONFIG (no sandbox, no substituters, nothing from /etc).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

missing=()
command -v git >/dev/null 2>&1 || missing+=(git)
command -v nix-instantiate >/dev/null 2>&1 || missing+=(nix-bin)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)  # checks the NixOS module's units
# the fleet tests start their own PostgreSQL server (initdb into a temp dir) from Debian's binaries
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
[ -x /usr/bin/python3 ] || missing+=(python3)
/usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]} from Debian" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

VENV="${BUILDREF_VENV:-$ROOT/.venv}"
[ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[test]"
export PATH="$VENV/bin:$PATH"
export NIX_REMOTE=""
# The isolated Nix configuration, defined once (tests/nix.conf): the tests and benchmarks read it too.
NIX_CONFIG="$(cat "$ROOT/tests/nix.conf")"
export NIX_CONFIG
