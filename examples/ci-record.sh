#!/usr/bin/env bash
# CI step: after pushing or tagging, have the builder's buildref record the repository's refs, so
# `buildref lookup app <tag>` answers at once (configured repositories are also watched).
#   BUILDREF_SOCKET=/run/buildref/query.sock examples/ci-record.sh app v1.2.3
set -euo pipefail
repo=$1
shift
buildref record "$repo" "$@"
buildref lookup "$repo" "${1:-HEAD}" || true   # show what is already built for it
