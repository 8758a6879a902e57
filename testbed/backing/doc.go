// Package backing starts real backing services (Redis standalone, Redis
// Sentinel, Redis Cluster and ClickHouse) on free 127.0.0.1 ports, each in its
// own temporary directory, and injects faults into them: processes can be
// killed (SIGKILL), frozen (SIGSTOP), thawed (SIGCONT) and restarted on the
// same port with the same data directory, and TCP traffic can be routed
// through an in-process toxiproxy to add latency, blackhole it, refuse it or
// reset it.
//
// The core API returns errors and has Close methods so that ordinary programs
// (load and chaos tools, demos) can use it. The Must* helpers wrap it for
// tests: they register t.Cleanup and call t.Fatalf on error. Nothing is ever
// skipped: when a server binary is missing, the start functions return an
// error that names the Debian package to install.
//
// Every child process runs in its own process group, receives SIGKILL if the
// parent dies, and writes its logs into its directory. When a start fails, the
// returned error contains the tail of the server's logs. Set the environment
// variable BACKING_KEEP_DIRS=1 to keep the directories after Close for
// debugging.
package backing
