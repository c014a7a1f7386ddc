# txlock developer tasks. `make test` is what CI runs (see .ci/run).
#
# Targets that need a server get its DSN from scripts/db.sh: $DBLOCK_DSN if
# set, else MariaDB on 127.0.0.1:3306, else a throwaway mariadbd on port
# 33306 (installed with apt-get when possible). `make db-stop` stops the
# throwaway server.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test
.DELETE_ON_ERROR:

# Go from /usr/local/go when it is not on PATH already.
export PATH := $(PATH):/usr/local/go/bin

GO ?= go
PKGS ?= ./...

# WITH_DSN resolves the test server's DSN and exports it as DBLOCK_DSN for
# the rest of the recipe line (a failure of scripts/db.sh stops the recipe).
WITH_DSN = dsn="$$(scripts/db.sh)"; export DBLOCK_DSN="$$dsn";

# FMT_CHECK fails, listing them, if some Go files are not gofmt-formatted.
define FMT_CHECK
unformatted="$$(gofmt -l .)"; \
if [[ -n "$$unformatted" ]]; then \
	echo "gofmt: these files need formatting (run 'make fmt'):" >&2; \
	echo "$$unformatted" >&2; \
	exit 1; \
fi
endef

.PHONY: test demo bench db db-stop migrate generate torture fmt fmt-check vet tidy test-ha

## test: go vet, gofmt check, then all tests with the race detector. With
## the default PKGS, dblock's review tests and its fault and torture tests
## run in two more go test processes beside the rest: they spend their time
## waiting out leases and partitions, not on the CPU, and dblock is the
## longest package.
DBLOCK_SHARD1 := ^TestReview
DBLOCK_SHARD2 := ^(TestFault|TestTorture)
DBLOCK_SKIP := ^(TestReview|TestFault|TestTorture)
test:
	@$(WITH_DSN) \
	$(GO) vet $(PKGS); \
	$(GO) -C bench vet -mod=mod .; \
	$(FMT_CHECK); \
	rc=0; \
	if [[ "$(PKGS)" == "./..." ]]; then \
		$(GO) test -race -count=1 -run '^$$' ./dblock/ >/dev/null; \
		out1="$$(mktemp)"; out2="$$(mktemp)"; \
		$(GO) test -race -count=1 -timeout 9m -run '$(DBLOCK_SHARD1)' ./dblock/ >"$$out1" 2>&1 & pid1=$$!; \
		$(GO) test -race -count=1 -timeout 9m -run '$(DBLOCK_SHARD2)' ./dblock/ >"$$out2" 2>&1 & pid2=$$!; \
		$(GO) test -race -count=1 -timeout 9m -skip '$(DBLOCK_SKIP)' $(PKGS) || rc=$$?; \
		wait $$pid1 || rc=$$?; \
		echo "dblock, tests matching $(DBLOCK_SHARD1) (a second process):"; cat "$$out1"; \
		wait $$pid2 || rc=$$?; \
		echo "dblock, tests matching $(DBLOCK_SHARD2) (a third process):"; cat "$$out2"; \
		rm -f "$$out1" "$$out2"; \
	else \
		$(GO) test -race -count=1 -timeout 9m $(PKGS) || rc=$$?; \
	fi; \
	if [[ -z "$${TXLOCK_HA:-}" ]]; then \
		echo "internal/hatest: the HA tests were skipped (replication and Galera topologies, a few minutes): run them with 'make test-ha'"; \
	fi; \
	exit $$rc

## demo: run the orders example against the test server
demo:
	@$(WITH_DSN) $(GO) run ./examples/orders/cmd/demo

## bench: the benchmark suite (bench/: txlock beside the raw floor and its
## peers, a few minutes; BENCH_FLAGS=-quick for under one, -full for the long
## run), then the dblock micro-benchmarks. bench/ is a module of its own
## (redis, gonum/plot stay out of the library's go.mod); -mod=mod lets its
## go.sum follow the library's new dependencies.
BENCH_FLAGS ?=
bench:
	@$(WITH_DSN) cd bench && $(GO) run -mod=mod . $(BENCH_FLAGS)
	@$(WITH_DSN) $(GO) test -run '^$$' -bench . -benchmem ./dblock/

## db: print the test server's DSN, starting a server if needed
db:
	@scripts/db.sh

## db-stop: stop the throwaway server that scripts/db.sh started, if any
db-stop:
	@scripts/db.sh stop

## migrate: create the lock tables (tb_lock) on the test server
migrate:
	@$(WITH_DSN) $(GO) run ./cmd/txlock migrate up

## generate: run go generate
generate:
	$(GO) generate $(PKGS)

## torture: the long randomized concurrency tests (up to an hour)
torture:
	@$(WITH_DSN) TXLOCK_TORTURE=1 $(GO) test -race -run Torture -timeout 60m $(PKGS)

## fmt: format all Go files
fmt:
	gofmt -w .

## fmt-check: fail if a Go file is not gofmt-formatted
fmt-check:
	@$(FMT_CHECK)

## vet: go vet
vet:
	$(GO) vet $(PKGS)

## tidy: go mod tidy
tidy:
	$(GO) mod tidy

## test-ha: the high-availability tests (internal/hatest, opt-in with
## TXLOCK_HA=1): throwaway primary + replica MariaDB pairs (async and
## semi-sync) started in temp dirs on free ports, failover with a relay,
## split brain with and without read-only fencing, fencing tokens across
## repeated failovers; a 3-node Galera cluster (single- and multi-writer,
## node kill). Needs mariadb-server (and galera-4, rsync for Galera); no test
## server DSN. A few minutes. See docs/HA.md.
test-ha:
	TXLOCK_HA=1 $(GO) test -race -count=1 -timeout 20m -v ./internal/hatest/...
