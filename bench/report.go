package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"
)

// result is one scenario's figures. Latencies are in microseconds.
type result struct {
	ID        string  `json:"id"`
	Title     string  `json:"title"`
	Server    string  `json:"server,omitempty"`
	Rules     int     `json:"rules,omitempty"`
	Baseline  string  `json:"baseline,omitempty"`
	TargetRPS float64 `json:"target_rps,omitempty"`
	Skipped   string  `json:"skipped,omitempty"`
	Error     string  `json:"error,omitempty"`

	Requests  uint64         `json:"requests"`
	Errors    int            `json:"rpc_errors"`
	ErrorDist map[string]int `json:"rpc_error_distribution,omitempty"`
	RPS       float64        `json:"rps"`
	P50us     float64        `json:"p50_us"`
	P99us     float64        `json:"p99_us"`
	P999us    float64        `json:"p99_9_us"`

	CPUPerReqUS  float64 `json:"server_cpu_us_per_request"`
	AllocsPerReq float64 `json:"server_allocs_per_request"`
	RSSBytes     int64   `json:"server_rss_bytes"`
	HWMBytes     int64   `json:"server_peak_rss_bytes"`
	HeapInuse    float64 `json:"server_heap_inuse_bytes"`
	// ClientCPUPerReqUS is the harness's (ghz's) CPU time per call.
	ClientCPUPerReqUS float64 `json:"client_cpu_us_per_request"`
	// OtherLoadCores is the CPU the rest of the shared machine used
	// during the run, in cores: noise.
	OtherLoadCores float64 `json:"other_load_cores"`

	// mandate-authz only.
	Decisions     float64  `json:"decisions,omitempty"`
	Allowed       float64  `json:"allowed,omitempty"`
	Denied        float64  `json:"denied,omitempty"`
	HandlerP50us  *float64 `json:"handler_p50_us,omitempty"`
	HandlerP99us  *float64 `json:"handler_p99_us,omitempty"`
	CacheHitRatio *float64 `json:"cache_hit_ratio,omitempty"`
	LogDropped    float64  `json:"decision_log_dropped,omitempty"`
	StaleAllows   *float64 `json:"stale_allows,omitempty"`

	// Ratio holds each figure divided by the baseline's: rps, p50, p99,
	// p99_9, cpu_per_request, allocs_per_request.
	Ratio map[string]float64 `json:"ratio_to_baseline,omitempty"`
	Extra map[string]float64 `json:"extra,omitempty"`
	Goals []goalResult       `json:"goals,omitempty"`
	Notes []string           `json:"notes,omitempty"`
}

type goalResult struct {
	Goal  string `json:"goal"`
	Met   bool   `json:"met"`
	Known bool   `json:"known"`
}

func newResult(sc scenario) *result {
	return &result{ID: sc.id, Title: sc.title, Server: sc.server, Rules: sc.rules, Baseline: sc.base, Extra: map[string]float64{}}
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// fill derives the figures from the client's view, the server's CPU time
// and two scrapes of its metrics around the measured run.
func (r *result) fill(lr *loadResult, cpu time.Duration, before, after samples, mem memory, authz bool) {
	r.Requests, r.Errors, r.ErrorDist = lr.count, lr.errors, lr.errorDist
	r.RPS = lr.rps
	r.P50us, r.P99us, r.P999us = us(lr.p50), us(lr.p99), us(lr.p999)
	n := float64(lr.count)
	if n > 0 {
		r.CPUPerReqUS = us(cpu) / n
		r.AllocsPerReq = (after.sum("go_memstats_mallocs_total") - before.sum("go_memstats_mallocs_total")) / n
	}
	r.RSSBytes, r.HWMBytes = mem.RSS, mem.HWM
	r.HeapInuse = after.sum("go_memstats_heap_inuse_bytes")
	if !authz {
		return
	}
	delta := func(name string, labels ...string) float64 {
		return after.sum(name, labels...) - before.sum(name, labels...)
	}
	r.Decisions = delta("mandate_authz_decisions_total")
	r.Allowed = delta("mandate_authz_decisions_total", `result="allow"`)
	r.Denied = r.Decisions - r.Allowed
	r.LogDropped = delta("mandate_authz_decision_log_dropped_total")
	bs := histogramDelta(before, after, "mandate_authz_check_duration_seconds")
	if p := quantile(0.5, bs); !math.IsNaN(p) {
		v := p * 1e6
		r.HandlerP50us = &v
	}
	if p := quantile(0.99, bs); !math.IsNaN(p) {
		v := p * 1e6
		r.HandlerP99us = &v
	}
	hits, misses := delta("mandate_authz_cache_hits_total"), delta("mandate_authz_cache_misses_total")
	if hits+misses > 0 {
		v := hits / (hits + misses)
		r.CacheHitRatio = &v
	}
}

// applyRatios divides each result's figures by its baseline's.
func applyRatios(scs []scenario, results []*result) {
	byID := map[string]*result{}
	for _, r := range results {
		byID[r.ID] = r
	}
	for _, r := range results {
		b := byID[r.Baseline]
		if r.Baseline == "" {
			continue
		}
		if b == nil || b.Error != "" || b.Requests == 0 || r.Error != "" || r.Requests == 0 {
			continue
		}
		r.Ratio = map[string]float64{}
		set := func(k string, v, base float64) {
			if base > 0 {
				r.Ratio[k] = v / base
			}
		}
		set("rps", r.RPS, b.RPS)
		set("p50", r.P50us, b.P50us)
		set("p99", r.P99us, b.P99us)
		set("p99_9", r.P999us, b.P999us)
		set("cpu_per_request", r.CPUPerReqUS, b.CPUPerReqUS)
		set("allocs_per_request", r.AllocsPerReq, b.AllocsPerReq)
	}
	// Goals read ratios: evaluate them again now that ratios exist.
	evaluateGoals(scs, results)
}

// evaluateGoals judges each result's goals on its current figures.
func evaluateGoals(scs []scenario, results []*result) {
	goals := map[string][]goal{}
	for _, sc := range scs {
		goals[sc.id] = sc.goals
	}
	for _, r := range results {
		r.Goals = nil
		if r.Skipped != "" {
			continue
		}
		for _, g := range goals[r.ID] {
			met, known := g.check(r)
			r.Goals = append(r.Goals, goalResult{Goal: g.text, Met: met, Known: known})
		}
	}
}

type machine struct {
	CPU        string `json:"cpu"`
	Cores      int    `json:"cores"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	Kernel     string `json:"kernel"`
	Go         string `json:"go"`
	OS         string `json:"os"`
}

func describeMachine() machine {
	m := machine{Cores: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0), Go: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

type settings struct {
	Smoke       bool   `json:"smoke"`
	Duration    string `json:"duration_per_scenario"`
	Warmup      string `json:"warmup_per_scenario"`
	Concurrency uint   `json:"ghz_concurrency"`
	Connections int    `json:"ghz_connections"`
	PacedRPS    uint   `json:"paced_rps"`
	Rounds      int    `json:"rounds"`
	Server      string `json:"server_flags"`
	Note        string `json:"note"`
}

func settingsOf(c *config) settings {
	return settings{
		Smoke: c.smoke, Duration: c.duration.String(), Warmup: c.warmup.String(),
		Concurrency: c.concurrency, Connections: 1, PacedRPS: c.pacedRPS, Rounds: c.rounds,
		Server: "mandate-authz --plaintext --policy-dir GENERATED --decision-log off (unless stated) --cache-ttl 2s --cache-size 100000 (defaults); GOMAXPROCS default (all cores)",
		Note: "ghz runs in the harness process on the same cores as the server, as a library with a per-call data function; " +
			"a fresh server process per scenario; server CPU from /proc/<pid>/stat, allocations from go_memstats_mallocs_total, " +
			"handler percentiles interpolated from the mandate_authz_check_duration_seconds histogram buckets",
	}
}

type report struct {
	Machine  machine   `json:"machine"`
	Settings settings  `json:"settings"`
	Elapsed  string    `json:"elapsed"`
	Results  []*result `json:"results"`
}

// failures are what makes a run fail: a scenario that erred, an RPC
// error, a stale allow. Throughput and latency goals never do.
func (rep *report) failures() []string {
	var out []string
	for _, r := range rep.Results {
		switch {
		case r.Skipped != "":
		case r.Error != "":
			out = append(out, fmt.Sprintf("%s: %s", r.ID, r.Error))
		case r.Errors > 0:
			out = append(out, fmt.Sprintf("%s: %d RPC errors", r.ID, r.Errors))
		case r.StaleAllows != nil && *r.StaleAllows > 0:
			out = append(out, fmt.Sprintf("%s: %.0f stale allows", r.ID, *r.StaleAllows))
		}
	}
	return out
}

func writeJSON(path string, rep *report) error {
	if dir := filepath.Dir(path); dir != "." {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}

func ratioText(r *result, k string) string {
	v, ok := r.Ratio[k]
	if !ok {
		return ""
	}
	return fmt.Sprintf(" (%.2fx)", v)
}

func optUS(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.1f", *v)
}

// writeTable prints the results as a Markdown table (it reads as plain
// text too), then goals and notes.
func writeTable(w io.Writer, rep *report) {
	m := rep.Machine
	fmt.Fprintf(w, "\nmachine: %s, %d cores, GOMAXPROCS %d, %s, Linux %s\n", m.CPU, m.Cores, m.GOMAXPROCS, m.Go, m.Kernel)
	s := rep.Settings
	fmt.Fprintf(w, "load: ghz, concurrency %d, 1 connection, %s per scenario after %s warmup; paced runs at %d req/s; total %s\n\n",
		s.Concurrency, s.Duration, s.Warmup, s.PacedRPS, rep.Elapsed)
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', tabwriter.Debug)
	fmt.Fprintln(tw, "| scenario\t req/s\t p50 µs\t p99 µs\t p99.9 µs\t server CPU µs/req\t allocs/req\t handler p50/p99 µs\t hit ratio\t other load\t |")
	fmt.Fprintln(tw, "|---\t---\t---\t---\t---\t---\t---\t---\t---\t---\t |")
	for _, r := range rep.Results {
		if r.Skipped != "" {
			fmt.Fprintf(tw, "| %s\t skipped: %s\t\t\t\t\t\t\t\t\t |\n", r.ID, r.Skipped)
			continue
		}
		if r.Error != "" && r.Requests == 0 {
			fmt.Fprintf(tw, "| %s\t ERROR: %s\t\t\t\t\t\t\t\t\t |\n", r.ID, r.Error)
			continue
		}
		hit := "-"
		if r.CacheHitRatio != nil {
			hit = fmt.Sprintf("%.3f", *r.CacheHitRatio)
		}
		handler := "-"
		if r.HandlerP99us != nil {
			handler = optUS(r.HandlerP50us) + " / " + optUS(r.HandlerP99us)
		}
		fmt.Fprintf(tw, "| %s\t %.0f%s\t %.0f%s\t %.0f%s\t %.0f%s\t %.1f%s\t %.1f%s\t %s\t %s\t %.2f\t |\n",
			r.ID, r.RPS, ratioText(r, "rps"), r.P50us, ratioText(r, "p50"), r.P99us, ratioText(r, "p99"),
			r.P999us, ratioText(r, "p99_9"), r.CPUPerReqUS, ratioText(r, "cpu_per_request"),
			r.AllocsPerReq, ratioText(r, "allocs_per_request"), handler, hit, r.OtherLoadCores)
	}
	tw.Flush()
	fmt.Fprintln(w)
	for _, r := range rep.Results {
		for _, g := range r.Goals {
			state := "MET"
			switch {
			case !g.Known:
				state = "n/a"
			case !g.Met:
				state = "MISSED"
			}
			fmt.Fprintf(w, "goal %-20s %-42s %s\n", r.ID, g.Goal, state)
		}
	}
	for _, r := range rep.Results {
		var extra []string
		if r.Server == "authz" && r.Requests > 0 {
			extra = append(extra, fmt.Sprintf("RSS %.1f MiB (peak %.1f MiB), heap in use %.1f MiB",
				float64(r.RSSBytes)/(1<<20), float64(r.HWMBytes)/(1<<20), r.HeapInuse/(1<<20)))
		}
		if r.LogDropped > 0 {
			extra = append(extra, fmt.Sprintf("%.0f decision log records dropped", r.LogDropped))
		}
		if r.StaleAllows != nil {
			extra = append(extra, fmt.Sprintf("stale allows: %.0f", *r.StaleAllows))
		}
		for k, v := range r.Extra {
			extra = append(extra, fmt.Sprintf("%s=%g", k, v))
		}
		extra = append(extra, r.Notes...)
		if r.Error != "" && r.Requests > 0 {
			extra = append(extra, "ERROR: "+r.Error)
		}
		if len(extra) > 0 {
			fmt.Fprintf(w, "%s: %s\n", r.ID, strings.Join(extra, "; "))
		}
	}
}
