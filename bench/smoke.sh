#!/usr/bin/env bash
# Short run of the load-test harness for CI: a few seconds per scenario.
# Fails on a scenario error, an RPC error, a misconfigured scenario
# (unexpected denials) or a stale allow; never on throughput or latency.
set -euo pipefail
cd "$(dirname "$0")"
go vet ./...
go test -race ./...
go run . -smoke -out results/smoke.json "$@"
