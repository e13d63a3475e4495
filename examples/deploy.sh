#!/usr/bin/env bash
# Deploy what REF of a repository built: the cached build when buildref knows one, a fresh build
# only when it does not — what people otherwise script around nix-prefetch-git and an SQL table.
#
#   examples/deploy.sh REPO_PATH REF FLAKE_ATTR TARGET
#
# REPO_PATH: the repository buildref records (its path); REF: branch, tag or rev; FLAKE_ATTR: the
# flake output to build when nothing is cached (packages.x86_64-linux.default); TARGET: the symlink
# (or profile) to point at the result. Prints the deployed store path.
set -euo pipefail
repo=$1 ref=$2 attr=$3 target=$4

# The newest build that used REF's source directly and is still in the store, if any.
read -r rev out < <(buildref lookup "$repo" "$ref" --direct --json | python3 -c '
import json, sys
answer = json.load(sys.stdin)
ready = [b["outputs"]["out"] for b in answer["builds"]
         if answer["fallback"] is None and b["valid"] and "out" in b["outputs"]]
print(answer["rev"], ready[0] if ready else "-")')

if [ "$out" = "-" ]; then
  echo "deploy: no build of $ref ($rev) in the store; building it" >&2
  out=$(nix build --no-link --json "git+file://$repo?rev=$rev#$attr" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["outputs"]["out"])')
else
  echo "deploy: $ref ($rev) is already built" >&2
fi
ln -sfn "$out" "$target"
echo "$out"
