#!/usr/bin/env bash
# `make run`: the product without APISIX. Checks the shipped config, then
# bin/edgedemo starts local redis-server and clickhouse-server when they are
# installed, spawns bin/go-runner exactly as APISIX would (only
# APISIX_LISTEN_ADDRESS, APISIX_CONF_EXPIRE_TIME and PATH in its
# environment), drives a short, bounded APISIX-style traffic through it with
# the test bed and prints what happened, part by part.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for b in redis-server clickhouse-server; do
  command -v "$b" >/dev/null 2>&1 || missing+=("$b")
done
if ((${#missing[@]})); then
  echo "note: not installed: ${missing[*]} (Debian packages of the same names; 'make deps' as root installs them)."
  echo "      The demo still runs: the plugins that need them show their degraded behaviour."
  echo
fi
echo "== go-runner $(bin/go-runner version | awk '{print $2}'): config check"
bin/go-runner validate -c conf/config.yaml
echo
exec bin/edgedemo -runner bin/go-runner "$@"
