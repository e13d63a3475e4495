#!/usr/bin/env bash
# Deploy what REF of a repository built: from this machine's store when it is here, from a binary
# cache when a configured one holds it (narinfo and signature verified by buildref), and built only
# when neither — the deploy script people write around nix-prefetch-git and an SQL table.
#
#   BUILDREF_URL=http://index:8745 examples/deploy.sh REPO REF FLAKE ATTR TARGET
#
# REPO: the repository as the index names it (a configured name, or the path it was recorded
# under); REF: branch, tag or rev, resolved by the index; FLAKE: the flake to build when nothing is
# cached (git+https://..., git+file://...), taken at exactly the revision REF resolved to; ATTR: its
# output (packages.x86_64-linux.default); TARGET: the symlink (or profile) to point at the result.
# Prints the deployed store path.
#
# BUILDREF_URL asks an index elsewhere (the deploy host needs no service of its own); without it,
# the local service (BUILDREF_SOCKET). Fetching from a cache needs its key in this machine's
# trusted-public-keys, as for any substituter. Only a build of REF's own revision is deployed: an
# ancestor's build (the lookup's fallback) is not what REF names.
set -euo pipefail
repo=$1 ref=$2 flake=$3 attr=$4 target=$5
nix=(nix --extra-experimental-features "nix-command flakes")

read -r rev out cache < <(buildref lookup "$repo" "$ref" --direct --cached --json | python3 -c '
import json, os, sys
answer = json.load(sys.stdin)
builds = [] if answer["fallback"] else [b for b in answer["builds"] if "out" in b["outputs"]]
here = [b["outputs"]["out"] for b in builds if os.path.exists(b["outputs"]["out"])]
cached = [(b["outputs"]["out"], b["caches"][0]) for b in builds if b["caches"]]
if here:
    print(answer["rev"], here[0], "-")
elif cached:
    print(answer["rev"], *cached[0])
else:
    print(answer["rev"], "-", "-")')

if [ "$out" != "-" ] && [ "$cache" = "-" ]; then
  echo "deploy: $ref ($rev) is already in this machine's store" >&2
elif [ "$out" != "-" ]; then
  echo "deploy: fetching $ref ($rev) from $cache" >&2
  "${nix[@]}" copy --from "$cache" "$out"
else
  echo "deploy: no cached build of $ref ($rev); building it" >&2
  out=$("${nix[@]}" build --no-link --json "$flake?rev=$rev#$attr" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["outputs"]["out"])')
fi
ln -sfn "$out" "$target"
echo "$out"
