#!/usr/bin/env bash
# Makes sure the real servers the tests and `make run` use are installed.
# As root on Debian it installs what is missing (apt-get update once, then the
# packages). Otherwise it names the missing packages and fails: the
# integration tests are never skipped silently.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
have redis-server      || need+=(redis-server)
have redis-sentinel    || need+=(redis-sentinel)
have clickhouse-server || need+=(clickhouse-server)
have promtool          || need+=(prometheus)
have redis-benchmark   || need+=(redis-tools)   # make bench: the limiter script's physical limit
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "deps: installing ${need[*]} from Debian packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # apt may start services; the tests start their own instances on free ports.
  for s in redis-server redis-sentinel clickhouse-server prometheus; do
    (systemctl stop "$s" || service "$s" stop) >/dev/null 2>&1 || true
  done
  exit 0
fi
echo "deps: missing Debian packages: ${need[*]}" >&2
echo "deps: install them with: sudo apt-get install ${need[*]}" >&2
exit 1
