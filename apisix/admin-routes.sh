#!/usr/bin/env bash
# Puts the example routes into APISIX through its Admin API, after checking
# every plugin conf in them with `go-runner validate` (APISIX itself never
# looks inside the conf strings, so a typo would otherwise reach the runner).
#
#   APISIX_ADMIN_KEY=... apisix/admin-routes.sh [ROUTE...]
#
# ROUTE is one of the files in apisix/routes/ without .json (default: all of
# them): ratelimit, jwt, logged, all, degradation. Each becomes route id
# edge-<name>. Then the global rules of apisix/global_rules/ (edge-log: every
# route logged by APISIX's http-logger to the runner's ingest listener, the
# recommended logging path) are PUT as /apisix/admin/global_rules/<name>;
# name one as global:<name> to apply it alone. Environment:
#   APISIX_ADMIN_KEY   the admin key (required; from APISIX's config.yaml)
#   APISIX_ADMIN_URL   default http://127.0.0.1:9180
#   GO_RUNNER          the runner binary used to validate (default: bin/go-runner,
#                      else go-runner on PATH)
#   RUNNER_CONFIG      runner config the confs are checked against
#                      (default: apisix/go-runner.yaml)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
: "${APISIX_ADMIN_KEY:?set APISIX_ADMIN_KEY to APISIX\'s admin key}"
admin="${APISIX_ADMIN_URL:-http://127.0.0.1:9180}"
runner="${GO_RUNNER:-}"
if [[ -z "$runner" ]]; then
  if [[ -x "$here/../bin/go-runner" ]]; then runner="$here/../bin/go-runner"; else runner="$(command -v go-runner || true)"; fi
fi
[[ -n "$runner" ]] || { echo "go-runner not found: run 'make build' or set GO_RUNNER" >&2; exit 1; }
cfg="${RUNNER_CONFIG:-$here/go-runner.yaml}"

names=()
globals=()
for a in "$@"; do
  case "$a" in
    global:*) globals+=("${a#global:}") ;;
    *) names+=("$a") ;;
  esac
done
if (($# == 0)); then
  for f in "$here"/routes/*.json; do names+=("$(basename "$f" .json)"); done
  for f in "$here"/global_rules/*.json; do globals+=("$(basename "$f" .json)"); done
fi
files=()
for n in "${names[@]}"; do
  f="$here/routes/$n.json"
  [[ -f "$f" ]] || { echo "no such route: $n (see $here/routes)" >&2; exit 2; }
  files+=("$f")
done
for g in "${globals[@]}"; do
  [[ -f "$here/global_rules/$g.json" ]] || { echo "no such global rule: $g (see $here/global_rules)" >&2; exit 2; }
done

# The runner config may expand ${VAR}s the operator has not exported here;
# placeholders are enough to check the route confs against it.
if ((${#files[@]} > 0)); then
  REDIS_PASSWORD="${REDIS_PASSWORD:-x}" CLICKHOUSE_PASSWORD="${CLICKHOUSE_PASSWORD:-x}" \
    "$runner" validate -c "$cfg" "${files[@]}"
fi

for i in "${!names[@]}"; do
  echo "PUT $admin/apisix/admin/routes/edge-${names[$i]}"
  curl -fsS -X PUT "$admin/apisix/admin/routes/edge-${names[$i]}" \
    -H "X-API-KEY: $APISIX_ADMIN_KEY" -H 'Content-Type: application/json' \
    --data-binary @"${files[$i]}"
  echo
done

# The global rules carry no runner conf (http-logger is APISIX's own
# plugin); their log_format keys are the ones docs/clickhouselogger.md lists.
for g in "${globals[@]}"; do
  echo "PUT $admin/apisix/admin/global_rules/$g"
  curl -fsS -X PUT "$admin/apisix/admin/global_rules/$g" \
    -H "X-API-KEY: $APISIX_ADMIN_KEY" -H 'Content-Type: application/json' \
    --data-binary @"$here/global_rules/$g.json"
  echo
done
