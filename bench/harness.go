package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// harness holds what every scenario shares: binaries, policies, keys.
type harness struct {
	cfg         *config
	log         io.Writer
	dir         string
	ownDir      bool
	set         []byte
	authzBin    string
	noopBin     string
	keysPath    string
	kid         string
	priv        []byte
	policyDirs  map[int]string
	baselineRPS float64
}

func newHarness(ctx context.Context, cfg *config, log io.Writer) (*harness, error) {
	h := &harness{cfg: cfg, log: log, policyDirs: map[int]string{}}
	var err error
	if cfg.workDir == "" {
		if h.dir, err = os.MkdirTemp("", "mandate-bench-"); err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		h.ownDir = true
	} else {
		h.dir = cfg.workDir
		if err := os.MkdirAll(h.dir, 0o755); err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
	}
	if h.set, err = protoset(); err != nil {
		h.close()
		return nil, err
	}
	if h.authzBin, err = h.binary(ctx, cfg.authzBin, "mandate-authz", cfg.root, "./cmd/mandate-authz"); err != nil {
		h.close()
		return nil, err
	}
	if h.noopBin, err = h.binary(ctx, cfg.noopBin, "noop", ".", "./noop"); err != nil {
		h.close()
		return nil, err
	}
	if h.keysPath, h.kid, h.priv, err = mandateKeys(h.dir); err != nil {
		h.close()
		return nil, err
	}
	return h, nil
}

func (h *harness) logf(format string, args ...any) {
	fmt.Fprintf(h.log, "bench: "+format+"\n", args...)
}

// binary returns given, or builds pkg of the module in dir into the work
// directory. mandate-authz is built in the root module, with exactly the
// root's dependency versions.
func (h *harness) binary(ctx context.Context, given, name, dir, pkg string) (string, error) {
	if given != "" {
		return given, nil
	}
	out := filepath.Join(h.dir, name)
	start := time.Now()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("bench: go build %s: %w\n%s", pkg, err, b)
	}
	h.logf("built %s in %v", name, time.Since(start).Round(time.Millisecond))
	return out, nil
}

func (h *harness) close() {
	if h.ownDir && !h.cfg.keep {
		_ = os.RemoveAll(h.dir)
	} else {
		h.logf("work directory kept: %s", h.dir)
	}
}

func (h *harness) policyDir(rules int) (string, error) {
	if d, ok := h.policyDirs[rules]; ok {
		return d, nil
	}
	d, err := writePolicyDir(h.dir, rules)
	if err != nil {
		return "", err
	}
	h.policyDirs[rules] = d
	return d, nil
}

// serverArgs returns the command line of sc's server.
func (h *harness) serverArgs(sc scenario) (bin string, args []string, err error) {
	common := []string{"--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"}
	if sc.server == "noop" {
		return h.noopBin, common, nil
	}
	dir, err := h.policyDir(sc.rules)
	if err != nil {
		return "", nil, err
	}
	args = append(common, "--plaintext", "--policy-dir", dir, "--mandate-keys", h.keysPath, "--log-level", "warn")
	hasLog := false
	for _, a := range sc.args {
		hasLog = hasLog || a == "--decision-log"
		args = append(args, strings.ReplaceAll(a, "@workdir", h.dir))
	}
	if !hasLog {
		args = append(args, "--decision-log", "off")
	}
	if h.cfg.profileDir != "" && sc.profile {
		args = append(args, "--pprof")
	}
	return h.authzBin, args, nil
}

// run runs one scenario on a server process of its own and measures it.
func (h *harness) run(ctx context.Context, sc scenario) *result {
	r := newResult(sc)
	if sc.skip != "" {
		r.Skipped = sc.skip
		h.logf("%s: skipped: %s", sc.id, sc.skip)
		return r
	}
	measure := h.measure
	if sc.server == "authz+cp" {
		measure = h.revocationStorm
	}
	if err := measure(ctx, sc, r); err != nil {
		r.Error = err.Error()
		h.logf("%s: %v", sc.id, err)
	}
	for _, g := range sc.goals {
		met, known := g.check(r)
		r.Goals = append(r.Goals, goalResult{Goal: g.text, Met: met, Known: known})
	}
	return r
}

func (h *harness) measure(ctx context.Context, sc scenario, r *result) error {
	w, after, err := sc.work(h)
	if err != nil {
		return err
	}
	bin, args, err := h.serverArgs(sc)
	if err != nil {
		return err
	}
	srv, err := startServer(ctx, h.dir, sc.id, bin, args, 60*time.Second)
	if err != nil {
		return err
	}
	defer srv.stop()

	spec := loadSpec{addr: srv.grpcAddr, concurrency: h.cfg.concurrency, work: w}
	if sc.paced {
		spec.rps = h.cfg.pacedRPS
		r.TargetRPS = float64(h.cfg.pacedRPS)
	}
	if h.cfg.warmup > 0 {
		warm := spec
		warm.duration = h.cfg.warmup
		wr, err := runLoad(h.set, warm)
		if err != nil {
			return fmt.Errorf("warmup: %w", err)
		}
		if wr.errors > 0 {
			r.Errors += wr.errors
			r.ErrorDist = wr.errorDist
			return fmt.Errorf("warmup: %d of %d calls failed: %v", wr.errors, wr.count, wr.errorDist)
		}
	}

	before, err := scrape(ctx, srv.metricsAddr)
	if err != nil {
		return err
	}
	cpu0, err := cpuTime(srv.pid())
	if err != nil {
		return err
	}
	self0, err1 := cpuTime(os.Getpid())
	busy0, err2 := machineBusy()
	if err := errors.Join(err1, err2); err != nil {
		return err
	}
	spec.duration = h.cfg.duration
	lr, err := runLoad(h.set, spec)
	if err != nil {
		return err
	}
	cpu1, err := cpuTime(srv.pid())
	if err != nil {
		return err
	}
	self1, err1 := cpuTime(os.Getpid())
	busy1, err2 := machineBusy()
	if err := errors.Join(err1, err2); err != nil {
		return err
	}
	// CPU the rest of the machine used meanwhile (the machine is shared):
	// busy time not spent by the harness (ghz) or the server, in cores.
	if lr.elapsed > 0 {
		other := (busy1 - busy0) - (self1 - self0) - (cpu1 - cpu0)
		r.OtherLoadCores = math.Max(0, other.Seconds()/lr.elapsed.Seconds())
		r.ClientCPUPerReqUS = us(self1-self0) / math.Max(1, float64(lr.count))
	}
	afterM, err := scrape(ctx, srv.metricsAddr)
	if err != nil {
		return err
	}
	mem, err := readMemory(srv.pid())
	if err != nil {
		return err
	}
	if srv.exited() {
		return errServerDied
	}
	r.fill(lr, cpu1-cpu0, before, afterM, mem, sc.server == "authz")
	if after != nil {
		after(r)
	}
	if sc.server == "authz" {
		if r.Decisions != float64(lr.count) && lr.errors == 0 {
			r.Notes = append(r.Notes, fmt.Sprintf("server counted %.0f decisions for %d calls", r.Decisions, lr.count))
		}
		if sc.expectAllow && r.Denied > 0 {
			return fmt.Errorf("%.0f of %.0f decisions were denials: the scenario is misconfigured (reasons: %v)", r.Denied, r.Decisions, denyReasons(before, afterM))
		}
	}
	if lr.errors > 0 {
		return fmt.Errorf("%d of %d calls failed: %v", lr.errors, lr.count, lr.errorDist)
	}
	if h.cfg.profileDir != "" && sc.profile {
		if err := h.profile(ctx, sc, srv, spec); err != nil {
			return err
		}
	}
	h.logf("%s: %.0f req/s, p99 %.0fµs, %.1f µs CPU/req, %.1f allocs/req", sc.id, r.RPS, r.P99us, r.CPUPerReqUS, r.AllocsPerReq)
	return nil
}

// denyReasons lists the reasons of the denials between two scrapes.
func denyReasons(before, after samples) map[string]float64 {
	out := map[string]float64{}
	for k, v := range after {
		if strings.HasPrefix(k, "mandate_authz_decisions_total{") && !strings.Contains(k, `result="allow"`) {
			if d := v - before[k]; d > 0 {
				out[k] = d
			}
		}
	}
	return out
}

// profile runs another load period while capturing a CPU profile and an
// allocation profile (delta over the same seconds) from the server.
func (h *harness) profile(ctx context.Context, sc scenario, srv *server, spec loadSpec) error {
	if err := os.MkdirAll(h.cfg.profileDir, 0o755); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	secs := int(h.cfg.duration.Seconds())
	if secs < 1 {
		secs = 1
	}
	spec.duration = time.Duration(secs)*time.Second + 500*time.Millisecond
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, kind := range []string{"profile", "allocs"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := "cpu"
			if kind == "allocs" {
				name = "allocs"
			}
			path := filepath.Join(h.cfg.profileDir, sc.id+"."+name+".pprof")
			errs[i] = fetch(ctx, fmt.Sprintf("http://%s/debug/pprof/%s?seconds=%d", srv.metricsAddr, kind, secs), path)
		}()
	}
	_, lerr := runLoad(h.set, spec)
	wg.Wait()
	if lerr != nil {
		return lerr
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	h.logf("%s: profiles written to %s", sc.id, h.cfg.profileDir)
	return nil
}

func fetch(ctx context.Context, url, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("bench: %s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("bench: %w", err)
	}
	return f.Close()
}
