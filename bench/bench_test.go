package main

import (
	"math"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/mandate-dev/mandate/authz/mandate"
	"github.com/mandate-dev/mandate/policies"
)

const exposition = `# HELP go_memstats_mallocs_total Total number of mallocs.
# TYPE go_memstats_mallocs_total counter
go_memstats_mallocs_total 1000
mandate_authz_decisions_total{reason="allowed",result="allow"} 90
mandate_authz_decisions_total{reason="no_matching_rule",result="deny"} 10
mandate_authz_check_duration_seconds_bucket{le="1e-06"} 0
mandate_authz_check_duration_seconds_bucket{le="2.5e-06"} 50
mandate_authz_check_duration_seconds_bucket{le="5e-06"} 90
mandate_authz_check_duration_seconds_bucket{le="1e-05"} 100
mandate_authz_check_duration_seconds_bucket{le="+Inf"} 100
mandate_authz_check_duration_seconds_sum 0.0003
mandate_authz_check_duration_seconds_count 100
`

func TestParseTextAndSum(t *testing.T) {
	s, err := parseText(strings.NewReader(exposition))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		labels []string
		want   float64
	}{
		{"go_memstats_mallocs_total", nil, 1000},
		{"mandate_authz_decisions_total", nil, 100},
		{"mandate_authz_decisions_total", []string{`result="allow"`}, 90},
		{"mandate_authz_decisions_total", []string{`result="deny"`, `reason="no_matching_rule"`}, 10},
		{"mandate_authz_decisions", nil, 0},
	}
	for _, tt := range tests {
		if got := s.sum(tt.name, tt.labels...); got != tt.want {
			t.Errorf("sum(%s, %v) = %v, want %v", tt.name, tt.labels, got, tt.want)
		}
	}
	for _, bad := range []string{"novalue", "x{a=\"b\"} notanumber"} {
		if _, err := parseText(strings.NewReader(bad)); err == nil {
			t.Errorf("parseText(%q) accepted", bad)
		}
	}
}

func TestHistogramQuantile(t *testing.T) {
	after, err := parseText(strings.NewReader(exposition))
	if err != nil {
		t.Fatal(err)
	}
	bs := histogramDelta(samples{}, after, "mandate_authz_check_duration_seconds")
	if len(bs) != 5 || !math.IsInf(bs[4].le, 1) {
		t.Fatalf("buckets %+v", bs)
	}
	tests := []struct {
		q, want float64
	}{
		{0.5, 2.5e-6},   // exactly the 2.5µs bucket's count
		{0.25, 1.75e-6}, // halfway through the 1..2.5µs bucket
		{0.7, 3.75e-6},  // halfway through 2.5..5µs
		{0.99, 9.5e-6},  // 9/10 through 5..10µs
		{1, 1e-5},
	}
	for _, tt := range tests {
		if got := quantile(tt.q, bs); math.Abs(got-tt.want) > 1e-12 {
			t.Errorf("quantile(%v) = %g, want %g", tt.q, got, tt.want)
		}
	}
	// The delta removes earlier observations.
	before := samples{`mandate_authz_check_duration_seconds_bucket{le="1e-06"}`: 0,
		`mandate_authz_check_duration_seconds_bucket{le="2.5e-06"}`: 50,
		`mandate_authz_check_duration_seconds_bucket{le="5e-06"}`:   50,
		`mandate_authz_check_duration_seconds_bucket{le="1e-05"}`:   50,
		`mandate_authz_check_duration_seconds_bucket{le="+Inf"}`:    50}
	d := histogramDelta(before, after, "mandate_authz_check_duration_seconds")
	if got := quantile(0.5, d); math.Abs(got-4.0625e-6) > 1e-12 { // rank 25 of 40 in 2.5..5µs
		t.Errorf("delta quantile(0.5) = %g, want 4.0625e-06", got)
	}
	if !math.IsNaN(quantile(0.5, nil)) || !math.IsNaN(quantile(0.5, histogramDelta(after, after, "mandate_authz_check_duration_seconds"))) {
		t.Error("quantile without observations is not NaN")
	}
	// Everything past the last finite bound reports that bound.
	inf := []bucket{{le: 1e-6, count: 0}, {le: math.Inf(1), count: 10}}
	if got := quantile(0.99, inf); got != 1e-6 {
		t.Errorf("quantile in +Inf bucket = %g, want 1e-06", got)
	}
}

func TestParseStatCPU(t *testing.T) {
	// Field 2 may contain spaces and parentheses.
	stat := "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 100 1000 200 18446744073709551615"
	got, err := parseStatCPU(stat)
	if err != nil {
		t.Fatal(err)
	}
	if want := 3 * time.Second; got != want {
		t.Fatalf("cpu = %v, want %v", got, want)
	}
	for _, bad := range []string{"", "1234 (cmd S 1", "1234 (cmd) S 1 2 3", "1234 (cmd) S 1 1 1 0 -1 0 0 0 0 0 x 50"} {
		if _, err := parseStatCPU(bad); err == nil {
			t.Errorf("parseStatCPU(%q) accepted", bad)
		}
	}
}

func TestParseStatus(t *testing.T) {
	m, err := parseStatus("Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads: 3\n")
	if err != nil {
		t.Fatal(err)
	}
	if m.RSS != 1<<20 || m.HWM != 2<<20 {
		t.Fatalf("memory %+v", m)
	}
	for _, bad := range []string{"VmRSS: 1 kB\n", "VmRSS: x kB\nVmHWM: 1 kB\n", "VmRSS: 1 MB\nVmHWM: 1 kB\n"} {
		if _, err := parseStatus(bad); err == nil {
			t.Errorf("parseStatus(%q) accepted", bad)
		}
	}
}

func TestPercentile(t *testing.T) {
	var lat []time.Duration
	for i := 1; i <= 1000; i++ {
		lat = append(lat, time.Duration(i))
	}
	tests := []struct {
		q    float64
		want time.Duration
	}{{0.5, 500}, {0.99, 990}, {0.999, 999}, {1, 1000}, {0.0001, 1}}
	for _, tt := range tests {
		if got := percentile(lat, tt.q); got != tt.want {
			t.Errorf("percentile(%v) = %v, want %v", tt.q, got, tt.want)
		}
	}
	if percentile(nil, 0.5) != 0 {
		t.Error("percentile of nothing is not 0")
	}
}

// decode reads one length-delimited CheckRequest and requires it to be the
// whole input, as ghz's parser does.
func decode(t *testing.T, b []byte) *authv3.CheckRequest {
	t.Helper()
	n, k := protowire.ConsumeVarint(b)
	if k < 0 || int(n) != len(b)-k {
		t.Fatalf("not one length-delimited message: prefix %d (%d bytes) for %d bytes", n, k, len(b))
	}
	req := &authv3.CheckRequest{}
	if err := proto.Unmarshal(b[k:], req); err != nil {
		t.Fatal(err)
	}
	return req
}

func TestWorkloads(t *testing.T) {
	fixed := newFixedWorkload()
	if r := decode(t, fixed.next()); r.GetAttributes().GetSource().GetPrincipal() != "spiffe://example.org/agent/a7" {
		t.Fatalf("fixed request %v", r)
	}

	d := &distinctWorkload{rules: 3}
	seen := map[string]bool{}
	for i := 0; i < 100; i++ {
		h := decode(t, d.next()).GetAttributes().GetRequest().GetHttp()
		key := h.GetPath() + " " + h.GetHeaders()["x-ticket"]
		if seen[key] {
			t.Fatalf("distinct workload repeated %q", key)
		}
		seen[key] = true
	}

	z, err := newZipfWorkload(1000, 10_000, 1.1, 1)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[int32]int{}
	for _, id := range z.seq {
		if id < 0 || id >= 1000 {
			t.Fatalf("zipf id %d out of range", id)
		}
		counts[id]++
	}
	if counts[0] < counts[500]*10 || len(counts) < 50 {
		t.Fatalf("zipf not skewed with a tail: head %d, id 500 %d, distinct %d", counts[0], counts[500], len(counts))
	}
	if _, err := newZipfWorkload(1, 10, 1.1, 1); err == nil {
		t.Error("zipf with one identity accepted")
	}

	kid, _, priv, err := mandate.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	tw, err := newTokenWorkload(kid, priv, 3)
	if err != nil {
		t.Fatal(err)
	}
	toks := map[string]bool{}
	for i := 0; i < 4; i++ {
		r := decode(t, tw.next())
		toks[r.GetAttributes().GetRequest().GetHttp().GetHeaders()["x-mandate"]] = true
	}
	if len(toks) != 3 || tw.reused.Load() != 1 {
		t.Fatalf("%d distinct tokens, %d reuses; want 3 and 1", len(toks), tw.reused.Load())
	}
}

func TestPolicyDirLoads(t *testing.T) {
	for _, rules := range []int{1, 10} {
		dir, err := writePolicyDir(t.TempDir(), rules)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := policies.LoadDir(dir); err != nil {
			t.Fatalf("rules=%d: %v", rules, err)
		}
	}
}

func TestProtoset(t *testing.T) {
	b, err := protoset()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "envoy/service/auth/v3/external_auth.proto") || !strings.Contains(string(b), "google/protobuf/any.proto") {
		t.Fatal("protoset lacks the service or its imports")
	}
}

func TestApplyRatiosAndFailures(t *testing.T) {
	scs := []scenario{{id: "b"}, {id: "s", base: "b", goals: []goal{rpsRatioAtLeast(0.9)}}}
	results := []*result{
		{ID: "b", Requests: 10, RPS: 100, P99us: 10, CPUPerReqUS: 2, AllocsPerReq: 4},
		{ID: "s", Baseline: "b", Requests: 10, RPS: 80, P99us: 20, CPUPerReqUS: 3, AllocsPerReq: 8},
	}
	applyRatios(scs, results)
	s := results[1]
	if s.Ratio["rps"] != 0.8 || s.Ratio["p99"] != 2 || s.Ratio["cpu_per_request"] != 1.5 || s.Ratio["allocs_per_request"] != 2 {
		t.Fatalf("ratios %v", s.Ratio)
	}
	if len(s.Goals) != 1 || !s.Goals[0].Known || s.Goals[0].Met {
		t.Fatalf("goals %+v", s.Goals)
	}
	rep := &report{Results: results}
	if f := rep.failures(); len(f) != 0 {
		t.Fatalf("failures on a slow but clean run: %v", f)
	}
	stale := 1.0
	results = append(results, &result{ID: "e", Errors: 2}, &result{ID: "x", Error: "boom"},
		&result{ID: "r", StaleAllows: &stale}, &result{ID: "k", Skipped: "later"})
	rep.Results = results
	if f := rep.failures(); len(f) != 3 {
		t.Fatalf("failures %v, want 3", f)
	}
}

func TestParseMachineBusy(t *testing.T) {
	got, err := parseMachineBusy("cpu  100 10 20 500 30 1 2 3 40 0")
	if err != nil {
		t.Fatal(err)
	}
	// user+nice+system+irq+softirq+steal = 136 ticks; idle, iowait and
	// guest (inside user) are not added.
	if want := 1360 * time.Millisecond; got != want {
		t.Fatalf("busy = %v, want %v", got, want)
	}
	for _, bad := range []string{"", "cpu0 1 2 3 4", "cpu 1 2 x 4 5"} {
		if _, err := parseMachineBusy(bad); err == nil {
			t.Errorf("parseMachineBusy(%q) accepted", bad)
		}
	}
}
