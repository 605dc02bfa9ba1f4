# graygate — developer entry points.
#
#   make build   release build  -> target/release/graygate
#   make run     build, start two demo backends and graygate (scripts/run-demo.sh)
#   make test    fmt check, clippy, unit + integration + doc tests, config check, deploy/ checks
#   make check   validate conf/graygate.yaml with the release binary
#   make bench   graygate vs nginx and the bare Pingora floor (bench/compare.sh -> docs/benchmarks.md),
#                thread scaling (bench/threads.sh), the same over
#                HTTPS (bench/https.sh), cached lookups (bench/assignments.sh), the cost of
#                a rollout rule against a plain split (bench/rollout.sh), 10 to 10,000
#                rules and hosts (bench/scale.sh), the access log's cost
#                (bench/access_log.sh), reload of 1,000 and 10,000 rules (benches/reload.rs)
#   make faults  fault suite (bench/faults.sh): Redis, peers, reloads, slow clients, limits, bad requests
#   make soak    10 minutes of load and recurring faults (bench/soak.sh; CI only with SOAK=1)
#   make fmt | lint | clean

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

CARGO  ?= cargo
CONFIG ?= conf/graygate.yaml

.PHONY: help deps-run deps-test build run test check check-deploy bench faults soak fmt lint clean

help:
	@sed -n '2,15p' Makefile | sed 's/^# \{0,1\}//'

deps-run:
	@bash scripts/install-deps.sh run

deps-test:
	@bash scripts/install-deps.sh test

build: deps-run
	$(CARGO) build --release --locked

run: deps-run build
	bash scripts/run-demo.sh

test: deps-test
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings
	$(CARGO) test --all-targets --locked
	@# doc tests only exist for a library target
	@if [[ -f src/lib.rs ]]; then \
		echo "$(CARGO) test --doc --locked"; \
		$(CARGO) test --doc --locked; \
	else \
		echo "no src/lib.rs: skipping doc tests"; \
	fi
	$(CARGO) run --quiet --locked -- check -c $(CONFIG)
	bash scripts/check-deploy.sh

check-deploy: deps-test
	bash scripts/check-deploy.sh

check: deps-run
	$(CARGO) run --quiet --release --locked -- check -c $(CONFIG)

# Every part runs even when an earlier one misses its target; the exit status reports it.
bench: deps-run
	@status=0; \
	bash bench/compare.sh || status=1; \
	bash bench/threads.sh || status=1; \
	bash bench/https.sh || status=1; \
	bash bench/assignments.sh || status=1; \
	bash bench/rollout.sh || status=1; \
	bash bench/scale.sh || status=1; \
	bash bench/access_log.sh || status=1; \
	$(CARGO) bench --locked --bench reload || status=1; \
	exit $$status

faults: deps-run
	bash bench/faults.sh

soak: deps-run
	bash bench/soak.sh

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

clean:
	$(CARGO) clean
