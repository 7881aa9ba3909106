// Command bench load-tests mandate-authz with ghz on loopback, next to a
// no-op Check server (the baseline: the cost of gRPC and ghz themselves),
// and reports throughput, latency, server CPU and allocations per request,
// each as a ratio to the baseline. See README.md.
//
//	cd bench && go run .            # full run, about 2.5 minutes
//	cd bench && go run . -smoke     # a few seconds per scenario, for CI
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code, err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

type config struct {
	smoke       bool
	duration    time.Duration
	warmup      time.Duration
	concurrency uint
	pacedRPS    uint
	rounds      int
	out         string
	authzBin    string
	noopBin     string
	only        map[string]bool
	profileDir  string
	workDir     string
	keep        bool
	root        string
	cpBin       string
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.BoolVar(&c.smoke, "smoke", false, "short run for CI: -duration 2s -warmup 300ms; fails on errors, never on numbers")
	fs.DurationVar(&c.duration, "duration", 8*time.Second, "measured load per scenario")
	fs.DurationVar(&c.warmup, "warmup", time.Second, "unmeasured load before each scenario")
	fs.UintVar(&c.concurrency, "concurrency", 50, "ghz concurrency (in-flight requests)")
	fs.UintVar(&c.pacedRPS, "rps", 5000, "request rate of the paced scenarios")
	fs.IntVar(&c.rounds, "rounds", 1, "run the scenarios (baselines included) this many times in turn and report medians: each ratio is the median of the rounds' ratios")
	fs.StringVar(&c.out, "out", "results/latest.json", "write the results as JSON here (empty: don't)")
	fs.StringVar(&c.authzBin, "authz-bin", "", "mandate-authz binary (default: go build ../cmd/mandate-authz)")
	fs.StringVar(&c.cpBin, "cp-bin", "", "mandate-cp binary for scenario 3 (default: go build ../cmd/mandate-cp)")
	fs.StringVar(&c.noopBin, "noop-bin", "", "no-op server binary (default: go build ./noop)")
	only := fs.String("only", "", "comma-separated scenario ids to run (baselines always run)")
	fs.StringVar(&c.profileDir, "profile", "", "capture CPU and allocation profiles of scenarios 1 and 2 into this directory (an extra, unmeasured load period each)")
	fs.StringVar(&c.workDir, "workdir", "", "directory for binaries, policies and logs (default: a temporary one)")
	fs.BoolVar(&c.keep, "keep", false, "keep the work directory")
	fs.StringVar(&c.root, "root", "..", "the mandate module's directory (mandate-authz is built there)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	durSet, warmSet := false, false
	fs.Visit(func(f *flag.Flag) {
		durSet = durSet || f.Name == "duration"
		warmSet = warmSet || f.Name == "warmup"
	})
	if c.smoke {
		if !durSet {
			c.duration = 2 * time.Second
		}
		if !warmSet {
			c.warmup = 300 * time.Millisecond
		}
	}
	if c.duration < 500*time.Millisecond || c.duration > 10*time.Minute {
		return nil, fmt.Errorf("-duration %v: want 500ms..10m", c.duration)
	}
	if c.warmup < 0 || c.warmup > time.Minute {
		return nil, fmt.Errorf("-warmup %v: want 0..1m", c.warmup)
	}
	if c.concurrency < 1 || c.concurrency > 10_000 {
		return nil, fmt.Errorf("-concurrency %d: want 1..10000", c.concurrency)
	}
	if c.rounds < 1 || c.rounds > 20 {
		return nil, fmt.Errorf("-rounds %d: want 1..20", c.rounds)
	}
	if c.pacedRPS < 1 {
		return nil, fmt.Errorf("-rps must be positive")
	}
	if *only != "" {
		c.only = map[string]bool{}
		for _, id := range strings.Split(*only, ",") {
			c.only[strings.TrimSpace(id)] = true
		}
	}
	return c, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return 2, err
	}
	h, err := newHarness(ctx, cfg, stderr)
	if err != nil {
		return 1, err
	}
	defer h.close()

	all := scenarios()
	known := map[string]bool{}
	for _, sc := range all {
		known[sc.id] = true
	}
	for id := range cfg.only {
		if !known[id] {
			return 2, fmt.Errorf("-only: unknown scenario %q", id)
		}
	}
	start := time.Now()
	var rounds [][]*result
	for i := range cfg.rounds {
		if cfg.rounds > 1 {
			fmt.Fprintf(stderr, "bench: round %d of %d\n", i+1, cfg.rounds)
		}
		var results []*result
		for _, sc := range all {
			if cfg.only != nil && sc.id != "baseline" && sc.id != "baseline-paced" && !cfg.only[sc.id] {
				continue
			}
			if ctx.Err() != nil {
				return 1, ctx.Err()
			}
			r := h.run(ctx, sc)
			if r.ID == "baseline" && r.RPS > 0 {
				h.baselineRPS = r.RPS
			}
			results = append(results, r)
		}
		applyRatios(all, results)
		rounds = append(rounds, results)
	}
	results := medianOfRounds(all, rounds)
	rep := &report{
		Machine:  describeMachine(),
		Settings: settingsOf(cfg),
		Results:  results,
		Elapsed:  time.Since(start).Round(time.Millisecond).String(),
	}
	writeTable(stdout, rep)
	if cfg.out != "" {
		if err := writeJSON(cfg.out, rep); err != nil {
			return 1, err
		}
		fmt.Fprintf(stdout, "\nresults written to %s\n", cfg.out)
	}
	if failures := rep.failures(); len(failures) > 0 {
		for _, f := range failures {
			fmt.Fprintln(stderr, "bench: FAIL:", f)
		}
		return 1, fmt.Errorf("%d scenario failure(s)", len(failures))
	}
	return 0, nil
}
