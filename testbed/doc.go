// Package testbed plays Apache APISIX (3.18) towards a real external plugin
// runner binary over its Unix socket, the way APISIX's
// apisix/plugins/ext-plugin/init.lua does.
//
// It has three parts:
//
//   - Runner spawns the runner binary with APISIX's environment, captures its
//     output, respawns it when it exits and can reproduce "apisix reload".
//   - Gateway is one nginx worker: it keeps a keepalive connection pool,
//     caches conf tokens, sends PrepareConf, HTTPReqCall and HTTPRespCall
//     frames, answers ExtraInfo questions and applies the runner's answers to
//     a simulated request and upstream exactly as APISIX does.
//   - Load drives a Gateway with many concurrent workers and reports
//     throughput, latency percentiles, outcome counts and a time series.
//
// Facts taken from init.lua that shape the behaviour (and that differ from a
// naive client) are documented on the types that implement them.
package testbed
