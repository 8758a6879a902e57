#!/usr/bin/env bash
# `make run`: the product without APISIX. Spawns bin/go-runner exactly as
# APISIX would (only APISIX_LISTEN_ADDRESS, APISIX_CONF_EXPIRE_TIME and PATH
# in its environment), drives a short, bounded APISIX-style traffic through
# it with the test bed, and prints what happened. Plugins add their parts as
# they land; until then it shows the plumbing: an empty chain (the no-op
# baseline) and a route naming an unknown plugin (skipped, like APISIX).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== go-runner $(bin/go-runner version | awk '{print $2}'): config check"
bin/go-runner validate -c conf/config.yaml
echo
echo "== no-op chain: APISIX-style pre-req calls, concurrency 1 and 8, 2 s each"
bin/edgebench -spawn bin/go-runner -runner-config conf/config.yaml -c 1,8 -d 2s
echo
echo "== a route naming a plugin the runner does not have (skipped, as APISIX does)"
bin/edgebench -spawn bin/go-runner -runner-config conf/config.yaml -c 1 -n 200 -pre-req 'no-such-plugin={}'
