# apisix-edge-runner: see README.md.
GO       ?= go
BIN      := bin
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)

.PHONY: all build run test deps bench chaos lint clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/go-runner ./cmd/go-runner
	$(GO) build -trimpath -o $(BIN)/edgebench ./cmd/edgebench
	$(GO) build -trimpath -o $(BIN)/edgedemo ./cmd/edgedemo
	$(GO) build -trimpath -o $(BIN)/edgeperf ./cmd/edgeperf
	$(GO) build -trimpath -o $(BIN)/edgechaos ./cmd/edgechaos

deps:
	@scripts/deps.sh

# The whole suite with the race detector, end-to-end tests included (they
# build the real binary and start real redis-server and clickhouse-server).
test: deps
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 15m ./...

# Runs the product for a newcomer with no APISIX at hand: builds the runner,
# starts it the way APISIX does and drives scripted traffic through it.
run: build
	@scripts/demo.sh

# The performance report, in one run: the no-op chain, each plugin alone,
# all three, the plugins with their backend down, jwtcache hits and misses,
# at concurrency 1, 8 and 64 as ratios to the no-op chain; the physical
# limits (redis-benchmark of the limiter's script, a bare ClickHouse batch
# insert, bare RSA verification); the Go micro-benchmarks. Writes
# docs/benchmarks.md (about 4 minutes; bounded).
# BASELINE_REV is the go-runner whose no-op chain the current one is
# compared with in the same run: by default the last commit before the
# runner's own protocol server (issue 12).
BASELINE_REV ?= c81d24d

bench: build deps
	@if scripts/build-baseline.sh $(BASELINE_REV) $(BIN)/go-runner-baseline; then \
		$(BIN)/edgeperf -runner $(BIN)/go-runner -baseline $(BIN)/go-runner-baseline -out docs/benchmarks.md; \
	else \
		$(BIN)/edgeperf -runner $(BIN)/go-runner -out docs/benchmarks.md; \
	fi

# The resilience matrix under load: every fault scenario against the real
# binary and real servers, bounded in time (about 5 minutes); exits
# non-zero on a failed verdict. `make test` runs the short version
# (internal/chaos). docs/resilience.md holds the last full run.
chaos: build deps
	$(BIN)/edgechaos -runner $(BIN)/go-runner

# staticcheck comes through the Go module proxy, pinned (its module version
# v0.8.2 is release 2026.2.2, which knows Go 1.26).
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

lint:
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

clean:
	rm -rf $(BIN)
