# StreamSpace Functions. `make run` and `make test` are the two commands;
# everything else is for developers and CI.

SHELL := /bin/bash
MODULE := github.com/streamspace-dev/functions
FUNCTIONS := $(notdir $(wildcard functions/*))
BIN := bin
GO ?= go

# Tests and `make run` use DATABASE_URL when it is set; otherwise they run
# under a throwaway PostgreSQL cluster from Debian's pg_virtualenv.
# Benchmarks keep fsync on, so commit costs are the ones a real server pays.
ifeq ($(strip $(DATABASE_URL)),)
WITH_DB := pg_virtualenv -t -o 'max_connections=300' -o 'fsync=off'
BENCH_DB := pg_virtualenv -t -o 'max_connections=300'
else
WITH_DB :=
BENCH_DB :=
endif

TEST_FLAGS ?= -count=1 -timeout 10m
# The second pass of `make test`: every function package's tests again, the
# functions reaching PostgreSQL through PgBouncer in transaction mode
# (scripts/with-pgbouncer), and the harness test that checks they do.
PGBOUNCER_PKGS := $(MODULE) $(MODULE)/functions/... $(MODULE)/shared/fntest
BENCH_FLAGS ?= -p 1 -run '^$$' -bench . -benchmem -count 1 -timeout 20m
# `make load` always runs in a throwaway cluster of its own, since its bar is
# set against max_connections=40; LOAD_FLAGS are cmd/loadtest's flags, e.g.
# make load LOAD_FLAGS=-duration=5s
LOAD_DB := pg_virtualenv -t -o 'max_connections=40'
LOAD_FLAGS ?=

.PHONY: all build run test bench load lint migrate tidy clean new-function tools

all: build

## build: one binary per function, the all-in-one, the local runner and the migrator, in bin/
build:
	@mkdir -p $(BIN)
	@for f in $(FUNCTIONS); do \
		echo "go build $(BIN)/$$f"; \
		$(GO) build -trimpath -o $(BIN)/$$f ./functions/$$f/cmd/$$f || exit 1; \
	done
	$(GO) build -trimpath -o $(BIN)/streamspace ./cmd/streamspace
	$(GO) build -trimpath -o $(BIN)/streamspace-local ./cmd/streamspace-local
	$(GO) build -trimpath -o $(BIN)/migrate ./shared/db/cmd/migrate

## run: the all-in-one function on http://localhost:8080 with an in-process broker
run:
	@mkdir -p $(BIN)
	$(GO) build -trimpath -o $(BIN)/streamspace-local ./cmd/streamspace-local
	$(WITH_DB) $(BIN)/streamspace-local

## test: every module's tests against a real PostgreSQL, then the function
## packages' again through PgBouncer, in one throwaway cluster
test: lint tools
	$(WITH_DB) bash -c '$(GO) test $(TEST_FLAGS) $(MODULE)/... && scripts/with-pgbouncer $(GO) test $(TEST_FLAGS) $(PGBOUNCER_PKGS)'

## tools: the servers the tests start (kube-apiserver, etcd, MinIO, Mailpit,
## Ory Hydra), built once from the Go module proxy into .tools/bin
tools:
	scripts/tools

## bench: the benchmarks named in the issues (figures go in the closing note)
bench: tools
	$(BENCH_DB) $(GO) test $(BENCH_FLAGS) $(MODULE)/... | tee bench.out

## load: several all-in-one instances against a PostgreSQL with
## max_connections=40, directly and through PgBouncer, 64 clients for 30 s
## each (cmd/loadtest); fails unless the connection bar is met
load:
	@mkdir -p $(BIN)
	$(GO) build -trimpath -o $(BIN)/streamspace ./cmd/streamspace
	$(GO) build -trimpath -o $(BIN)/loadtest ./cmd/loadtest
	$(LOAD_DB) $(BIN)/loadtest -bin $(BIN)/streamspace $(LOAD_FLAGS)

## lint: gofmt and go vet across every module
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(MODULE)/...

## migrate: apply the database migrations to DATABASE_URL
migrate:
	$(GO) run ./shared/db/cmd/migrate

## new-function: a new function from the skeleton, e.g. make new-function NAME=notes
new-function:
	@if [ -z "$(NAME)" ]; then echo "usage: make new-function NAME=<name>"; exit 2; fi
	$(GO) run ./cmd/new-function $(NAME)

## tidy: go mod tidy in every module
tidy:
	@for m in $$($(GO) list -m -f '{{.Dir}}'); do (cd $$m && $(GO) mod tidy) || exit 1; done

clean:
	rm -rf $(BIN)
