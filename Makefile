.PHONY: bench bench-smoke

# Full load-test run (about 2.5 minutes): table on stdout, JSON in
# bench/results/latest.json. See bench/README.md.
bench:
	cd bench && go run . -out results/latest.json

# Short harness run for CI (under a minute).
bench-smoke:
	bash bench/smoke.sh
