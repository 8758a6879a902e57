#!/usr/bin/env bash
# Builds go-runner from an earlier commit, for `make bench` to compare the
# runner core's no-op chain against: scripts/build-baseline.sh REV OUT.
# Prints nothing and exits 1 when REV is not in this clone's history.
set -euo pipefail
rev=$1 out=$2
git rev-parse --verify --quiet "$rev^{commit}" >/dev/null || { echo "build-baseline: $rev is not in this clone; no baseline" >&2; exit 1; }
dir=$(mktemp -d)
trap 'git worktree remove --force "$dir" >/dev/null 2>&1 || rm -rf "$dir"' EXIT
git worktree add --quiet --detach "$dir" "$rev"
(cd "$dir" && go build -trimpath -o "$OLDPWD/$out" ./cmd/go-runner)
