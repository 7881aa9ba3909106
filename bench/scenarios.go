package main

import (
	"fmt"
	"math"
	"time"
)

// scenario is one load test against one freshly started server.
type scenario struct {
	id    string
	title string
	// server is "noop" (the baseline) or "authz" (mandate-authz).
	server string
	// rules is the size of the generated policy set (authz only).
	rules int
	// args are extra mandate-authz flags.
	args []string
	// work builds the workload. It may return a hook that adds
	// workload-specific figures to the result after the run.
	work func(h *harness) (workload, func(*result), error)
	// paced runs at the harness's paced rate instead of saturating.
	paced bool
	// base is the id of the result the ratios are taken against.
	base string
	// expectAllow: every request must be allowed; a denial means the
	// scenario is misconfigured and the run fails.
	expectAllow bool
	// profile: with -profile, capture CPU and allocation profiles.
	profile bool
	// skip, when set, is why the scenario does not run.
	skip  string
	goals []goal
}

// goal is a target from the performance issue. Goals are reported, never
// enforced: the machine is shared and noisy. Handler latency goals are
// judged on the paced runs: at saturation ghz and the server oversubscribe
// the two cores, and the handler histogram then measures CPU queueing.
type goal struct {
	text  string
	check func(r *result) (met, known bool)
}

func rpsRatioAtLeast(min float64) goal {
	return goal{
		text: fmt.Sprintf("throughput >= %.1fx baseline", min),
		check: func(r *result) (bool, bool) {
			v, ok := r.Ratio["rps"]
			return v >= min, ok
		},
	}
}

func handlerP99Below(limit time.Duration) goal {
	return goal{
		text: fmt.Sprintf("handler p99 < %v", limit),
		check: func(r *result) (bool, bool) {
			if r.HandlerP99us == nil {
				return false, false
			}
			return *r.HandlerP99us < float64(limit)/float64(time.Microsecond), true
		},
	}
}

func extraAtLeast(key string, min float64) goal {
	return goal{
		text: fmt.Sprintf("%s >= %.0f", key, min),
		check: func(r *result) (bool, bool) {
			v, ok := r.Extra[key]
			return v >= min, ok
		},
	}
}

func p99RatioAtMost(max float64) goal {
	return goal{
		text: fmt.Sprintf("end-to-end p99 <= %.1fx paced baseline", max),
		check: func(r *result) (bool, bool) {
			v, ok := r.Ratio["p99"]
			return v <= max, ok
		},
	}
}

func fixedWork(*harness) (workload, func(*result), error) { return newFixedWorkload(), nil, nil }

// scenarios returns the scenarios in run order. The baselines come first:
// the others' ratios are taken against them.
func scenarios() []scenario {
	return []scenario{
		{
			id: "baseline", title: "baseline: no-op Check server",
			server: "noop", work: fixedWork,
		},
		{
			id: "baseline-paced", title: "baseline, paced",
			server: "noop", work: fixedWork, paced: true,
		},
		{
			id: "1-cache-hit", title: "1 cache hit: one identity, one route",
			server: "authz", rules: 10, work: fixedWork, base: "baseline", expectAllow: true, profile: true,
			goals: []goal{rpsRatioAtLeast(0.9)},
		},
		{
			id: "1-cache-hit-paced", title: "1 cache hit, paced",
			server: "authz", rules: 10, work: fixedWork, paced: true, base: "baseline-paced", expectAllow: true,
			goals: []goal{p99RatioAtMost(1.2), handlerP99Below(5 * time.Microsecond)},
		},
		{
			id: "1-cache-hit-log", title: "1 cache hit, decision log to a file",
			server: "authz", rules: 10, work: fixedWork, base: "baseline", expectAllow: true,
			args: []string{"--decision-log", "@workdir/decisions.log"},
		},
		{
			id: "2-miss-10", title: "2 cache miss, 10 rules (CEL)",
			server: "authz", rules: 10, work: distinctWork(10), base: "baseline", expectAllow: true, profile: true,
			goals: []goal{rpsRatioAtLeast(0.8)},
		},
		{
			id: "2-miss-10000", title: "2 cache miss, 10,000 rules (CEL)",
			server: "authz", rules: 10_000, work: distinctWork(10_000), base: "baseline", expectAllow: true, profile: true,
			goals: []goal{rpsRatioAtLeast(0.8)},
		},
		{
			id: "2-miss-10-paced", title: "2 cache miss, 10 rules, paced",
			server: "authz", rules: 10, work: distinctWork(10), paced: true, base: "baseline-paced", expectAllow: true,
			goals: []goal{p99RatioAtMost(1.2), handlerP99Below(25 * time.Microsecond)},
		},
		{
			id: "2-miss-10000-paced", title: "2 cache miss, 10,000 rules, paced",
			server: "authz", rules: 10_000, work: distinctWork(10_000), paced: true, base: "baseline-paced", expectAllow: true,
			goals: []goal{p99RatioAtMost(1.2), handlerP99Below(25 * time.Microsecond)},
		},
		{
			id: "3-revocation-storm", title: "3 revocation storm: 1,000 subjects revoked every 100ms under paced load",
			server: "authz+cp", rules: 10, paced: true, base: "baseline-paced",
			goals: []goal{p99RatioAtMost(1.2), extraAtLeast("revocations_per_s", 0.95*stormBatch/stormInterval.Seconds())},
		},
		{
			id: "4-new-mandates", title: "4 first sight of mandates: a new token per request",
			server: "authz", rules: 10, work: tokenWork, base: "baseline", expectAllow: true,
		},
		{
			id: "5-many-identities", title: "5 many identities: 100,000 SPIFFE IDs, zipf",
			server: "authz", rules: 10, work: zipfWork, base: "baseline", expectAllow: true,
		},
		{
			id: "baseline-mcp", title: "baseline: no-op Check server fed 4 KiB MCP tool calls",
			server: "noop", work: mcpWork(false),
		},
		{
			id: "6-mcp-hit", title: "6 MCP: 4 KiB tools/call, strict parse, argument condition, cache hit",
			server: "authz", rules: 10, work: mcpWork(false), base: "baseline-mcp", expectAllow: true, profile: true,
			goals: []goal{rpsRatioAtLeast(0.9)},
		},
		{
			id: "6-mcp-miss", title: "6 MCP: 4 KiB tools/call, every call another repository (cache miss)",
			server: "authz", rules: 10, work: mcpWork(true), base: "baseline-mcp", expectAllow: true,
			goals: []goal{rpsRatioAtLeast(0.8)},
		},
		{
			// The baseline again, last: its ratio to the first shows how
			// much the shared machine drifted during the run.
			id: "baseline-repeat", title: "baseline again, after the scenarios (machine drift)",
			server: "noop", work: fixedWork, base: "baseline",
		},
	}
}

func mcpWork(distinct bool) func(*harness) (workload, func(*result), error) {
	return func(*harness) (workload, func(*result), error) { return newMCPWorkload(distinct), nil, nil }
}

func distinctWork(rules int) func(*harness) (workload, func(*result), error) {
	return func(*harness) (workload, func(*result), error) {
		return &distinctWorkload{rules: rules}, nil, nil
	}
}

// tokenWork signs enough mandates for the whole run, sized from the
// baseline's throughput (a new token per request cannot be faster than
// answering OK).
func tokenWork(h *harness) (workload, func(*result), error) {
	secs := (h.cfg.duration + h.cfg.warmup).Seconds()
	n := int(math.Min(math.Max(h.baselineRPS*secs*0.9, 20_000), 300_000))
	start := time.Now()
	w, err := newTokenWorkload(h.kid, h.priv, n)
	if err != nil {
		return nil, nil, err
	}
	h.logf("signed %d mandates in %v", n, time.Since(start).Round(time.Millisecond))
	return w, func(r *result) {
		r.Extra["tokens_signed"] = float64(n)
		r.Extra["token_reuses"] = float64(w.reused.Load())
		if w.reused.Load() > 0 {
			r.Notes = append(r.Notes, fmt.Sprintf("token pool ran out: %d requests reused a token", w.reused.Load()))
		}
	}, nil
}

const (
	zipfIdentities = 100_000
	zipfS          = 1.1
)

func zipfWork(*harness) (workload, func(*result), error) {
	w, err := newZipfWorkload(zipfIdentities, 1<<21, zipfS, 1)
	if err != nil {
		return nil, nil, err
	}
	return w, func(r *result) {
		// Distinct identities that called during the measured run (the
		// warmup came first in the sequence).
		used := w.n.Load()
		seen := make(map[int32]struct{})
		for i := int64(0); i < used && i < int64(len(w.seq)); i++ {
			seen[w.seq[i]] = struct{}{}
		}
		r.Extra["identities"] = zipfIdentities
		r.Extra["zipf_s"] = zipfS
		r.Extra["distinct_callers"] = float64(len(seen))
	}, nil
}
