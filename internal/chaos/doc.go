// Package chaos is the resilience matrix behind `make chaos` (cmd/edgechaos)
// and its short version in `make test` (chaos_test.go): thirteen fault
// scenarios run against the built go-runner binary, real redis-server,
// redis-sentinel and clickhouse-server (testbed/backing) and a real
// loopback JWKS endpoint (IdP), under steady paced load through the APISIX
// test bed on one route with all three plugins:
// ext-plugin-pre-req = [jwtcache, ratelimit], ext-plugin-post-resp =
// [clickhouselogger].
//
// Each scenario gets a fresh runner and runner config, a healthy phase, the
// fault, an after phase and a drain; requests are assigned to the phase in
// which they were sent. The verdict is a list of rules (Check), each with
// what the run gave: rules shared by every scenario (forged tokens never
// pass, the logger's row accounting is exact, /metrics agrees with what the
// client saw) and the scenario's own (fail open and marked degraded, p99
// against the scenario's own healthy phase, time to recover, nothing lost
// with the spool, fail closed past max_stale, ...). docs/resilience.md
// explains them and holds the matrix of a full run.
package chaos
