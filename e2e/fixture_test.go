package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/e2e/internal/agentproto"
	"github.com/mandate-dev/mandate/e2e/internal/proc"
	"github.com/mandate-dev/mandate/e2e/internal/spire"
)

// Identities of the deployment (trust domain example.org).
const (
	idCP           = "spiffe://example.org/mandate/cp"
	idAuthz        = "spiffe://example.org/mandate/authz"
	idOperator     = "spiffe://example.org/mandate/operator"
	idOrchestrator = "spiffe://example.org/orchestrator"
	// idProbe is an operator's debugging identity, allowed to call Check
	// on the replicas directly (mandatectl check) besides the proxy.
	idProbe = "spiffe://example.org/e2e/probe"

	idPlanner    = "spiffe://example.org/agent/planner"
	idResearcher = "spiffe://example.org/agent/researcher"
	idSupport    = "spiffe://example.org/agent/support/a1"
	idPay        = "spiffe://example.org/agent/pay"
	idDrifter    = "spiffe://example.org/agent/drifter"
	idWorker     = "spiffe://example.org/agent/worker"
)

// options configures a deployment.
type options struct {
	svidTTL     time.Duration // SPIRE default_x509_svid_ttl (0: 1h)
	staleBudget time.Duration // replicas' --stale-budget (0: 30s)
	maxRules    [2]int        // replicas' --max-rules (0: default)
	agents      []string      // agent IDs that get a testagent copy
	delegators  []string      // agent IDs that get a mandatectl copy (Delegate)
	policies    string        // policy directory applied at start (default testdata/policies)
	cpArgs      []string      // extra mandate-cp flags
	selfID      string        // register the test binary itself under this ID
	routes      string        // front proxy routes, JSON (default: "/" labelled app: echo)
}

// replica is one running mandate-authz.
type replica struct {
	name    string
	nodeID  string
	p       *proc.Process
	grpc    string
	metrics string
	declog  string // decision log file
}

// deployment is SPIRE, mandate-cp, two mandate-authz replicas, the front
// proxy and the echo upstream, all on loopback, every process with its own
// SVID from the SPIRE agent and mTLS on every link except proxy -> echo
// (plain HTTP on loopback: the upstream is the proxy's business, not
// Mandate's, and Envoy's upstream TLS is not under test).
type deployment struct {
	t        *testing.T
	opts     options
	env      *spire.Env
	dir      string
	logDir   string
	bins     map[string]string // identity or role -> binary copy
	cp       *proc.Process
	cpData   string
	cpAddrs  cpAddrs
	replicas [2]*replica
	proxyTLS string
	proxyPln string
	echo     string

	mu sync.Mutex
	n  int
}

type cpAddrs struct {
	XDS     string `json:"xds"`
	Admin   string `json:"admin"`
	Metrics string `json:"metrics"`
}

// issuancePolicy lets the orchestrator mint mandates for any agent.
const issuancePolicy = `apiVersion: mandate.dev/v1
kind: IssuancePolicy
rules:
  - name: orchestrator
    callers: ["spiffe://example.org/orchestrator"]
    subjects: ["spiffe://example.org/agent/**"]
    intents: ["*"]
    maxTTL: 10m
    scope:
      paths: ["/**"]
`

// deploy starts a deployment bounded by ctx; everything stops when t ends.
func deploy(ctx context.Context, t *testing.T, opts options) *deployment {
	t.Helper()
	bin := spire.RequireBinaries(t)
	start := time.Now()
	if opts.svidTTL == 0 {
		opts.svidTTL = time.Hour
	}
	if opts.staleBudget == 0 {
		opts.staleBudget = 30 * time.Second
	}
	if opts.routes == "" {
		opts.routes = `[{"prefix":"/","context_extensions":{"app":"echo"}}]`
	}
	if opts.policies == "" {
		opts.policies = "testdata/policies"
	}
	env, err := spire.Start(ctx, t, spire.Options{BinDir: bin, X509SVIDTTL: opts.svidTTL, LogLevel: "INFO"})
	if err != nil {
		t.Fatal(err)
	}
	d := &deployment{t: t, opts: opts, env: env, dir: t.TempDir(), bins: map[string]string{}}
	d.logDir = filepath.Join(d.dir, "logs")
	if err := os.Mkdir(d.logDir, 0o755); err != nil {
		t.Fatal(err)
	}

	// One binary copy per identity; all entries created, then one sync.
	type ident struct{ role, pkg, id string }
	idents := []ident{
		{"cp", "mandate-cp", idCP},
		{"authz-1", "mandate-authz", idAuthz},
		{"authz-2", "mandate-authz", idAuthz},
		{"frontproxy", "frontproxy", frontproxyID},
		{"operator", "mandatectl", idOperator},
		{"orchestrator", "mandatectl", idOrchestrator},
		{"probe", "mandatectl", idProbe},
	}
	for _, a := range opts.agents {
		idents = append(idents, ident{"agent:" + a, "testagent", a})
	}
	for _, a := range opts.delegators {
		idents = append(idents, ident{"ctl:" + a, "mandatectl", a})
	}
	for i, id := range idents {
		dst := filepath.Join(d.dir, "bin", fmt.Sprintf("%02d", i), id.pkg)
		if err := install(builtBinary(t, id.pkg), dst); err != nil {
			t.Fatal(err)
		}
		d.bins[id.role] = dst
		if err := env.CreateEntry(ctx, id.id, "unix:path:"+dst); err != nil {
			t.Fatal(err)
		}
	}
	d.bins["echo"] = builtBinary(t, "echo")
	if opts.selfID != "" {
		self, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		sel, err := spire.PathSelector(self)
		if err != nil {
			t.Fatal(err)
		}
		if err := env.CreateEntry(ctx, opts.selfID, sel); err != nil {
			t.Fatal(err)
		}
	}
	if err := env.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}

	d.cpData = filepath.Join(d.dir, "cp-data")
	d.startCP(ctx, "127.0.0.1:0")
	if out := d.ctl(ctx, "operator", "apply", "-f", opts.policies); out.code != 0 {
		t.Fatalf("apply: %s", out)
	}
	for i := range d.replicas {
		d.startReplica(ctx, i)
	}
	d.waitReady(ctx)

	echoFile := filepath.Join(d.dir, "echo.addr")
	d.startProc(ctx, proc.Spec{Name: "echo", Path: d.bins["echo"], Args: []string{"-addr-file", echoFile}})
	raw, err := proc.WaitFile(ctx, echoFile)
	if err != nil {
		t.Fatal(err)
	}
	d.echo = string(raw)
	proxyFile := filepath.Join(d.dir, "proxy.addr")
	d.startProc(ctx, proc.Spec{Name: "frontproxy", Path: d.bins["frontproxy"], Env: env.WorkloadEnv(), Args: []string{
		"-upstream", "http://" + d.echo,
		"-authz", d.replicas[0].grpc + "," + d.replicas[1].grpc,
		"-authz-id", idAuthz,
		"-addr-file", proxyFile,
		// Envoy's default is 200ms; -race binaries on a shared 2-core
		// machine need more headroom, and a timeout is a 403 either way.
		"-timeout", "1s",
		"-routes-json", d.opts.routes,
	}})
	raw, err = proc.WaitFile(ctx, proxyFile)
	if err != nil {
		t.Fatal(err)
	}
	var pa struct{ TLS, Plain string }
	if err := json.Unmarshal(raw, &pa); err != nil {
		t.Fatal(err)
	}
	d.proxyTLS, d.proxyPln = pa.TLS, pa.Plain
	t.Logf("deployment up in %v (svid ttl %v)", time.Since(start).Round(time.Millisecond), opts.svidTTL)
	return d
}

// raceEnv is set for every process: a -race binary otherwise sleeps 1s
// at exit (atexit_sleep_ms), which would be measured as mandatectl latency.
var raceEnv = []string{"GORACE=atexit_sleep_ms=0"}

// install hard-links (or copies) src to dst: a distinct path, hence a
// distinct unix:path selector.
func install(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// startProc starts a process logging into the deployment's log directory;
// at the end of the test it is stopped and its log checked for data races.
func (d *deployment) startProc(ctx context.Context, spec proc.Spec) *proc.Process {
	d.t.Helper()
	return startLogged(d.t, d.logDir, spec)
}

// startLogged starts a process logging into logDir; at the end of the test
// it is stopped and its log checked for data races.
func startLogged(t *testing.T, logDir string, spec proc.Spec) *proc.Process {
	t.Helper()
	spec.LogDir = logDir
	spec.Env = append(spec.Env, raceEnv...)
	p, err := proc.Start(t, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p.Stop()
		if b, err := os.ReadFile(p.LogPath()); err == nil && bytes.Contains(b, []byte("WARNING: DATA RACE")) {
			t.Errorf("data race reported by %s (log %s)", spec.Name, p.LogPath())
		}
	})
	return p
}

// startCP starts mandate-cp on d.cpData; xds is the xDS listen address
// (127.0.0.1:0 at first, the same port on a restart so replicas find it).
func (d *deployment) startCP(ctx context.Context, xds string) {
	d.t.Helper()
	pol := filepath.Join(d.dir, "issuance.yaml")
	if err := os.WriteFile(pol, []byte(issuancePolicy), 0o600); err != nil {
		d.t.Fatal(err)
	}
	addrFile := filepath.Join(d.dir, "cp.addr")
	_ = os.Remove(addrFile)
	args := []string{
		"--data-dir", d.cpData,
		"--xds-listen", xds, "--admin-listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
		"--addr-file", addrFile,
		"--trust-domain", "example.org",
		"--allowed-caller", idOperator,
		"--admin-peer", idOrchestrator,
		"--admin-peer", "spiffe://example.org/agent/**",
		"--issuance-policy", pol,
		"--mandate-max-ttl", "10m",
		"--workload-api", d.env.SocketAddr(),
	}
	d.cp = d.startProc(ctx, proc.Spec{Name: "mandate-cp", Path: d.bins["cp"], Env: d.env.WorkloadEnv(),
		Args: append(args, d.opts.cpArgs...)})
	raw, err := proc.WaitFile(ctx, addrFile)
	if err != nil {
		d.t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &d.cpAddrs); err != nil || d.cpAddrs.Admin == "" || d.cpAddrs.XDS == "" {
		d.t.Fatalf("cp addr file %q: %v", raw, err)
	}
}

// startReplica starts (or restarts) replica i.
func (d *deployment) startReplica(ctx context.Context, i int) {
	d.t.Helper()
	r := d.replicas[i]
	if r == nil {
		r = &replica{name: fmt.Sprintf("authz-%d", i+1), nodeID: fmt.Sprintf("authz-%d", i+1)}
		r.declog = filepath.Join(d.dir, r.name+".decisions.jsonl")
		d.replicas[i] = r
	}
	addrFile := filepath.Join(d.dir, r.name+".addr")
	_ = os.Remove(addrFile)
	args := []string{
		"--xds-server", d.cpAddrs.XDS,
		"--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--addr-file", addrFile,
		"--node-id", r.nodeID,
		"--allowed-caller", frontproxyID, "--allowed-caller", idProbe,
		"--trust-domain", "example.org",
		"--cp-id", idCP,
		"--decision-log", r.declog,
		"--stale-budget", d.opts.staleBudget.String(),
		"--workload-api", d.env.SocketAddr(),
	}
	if n := d.opts.maxRules[i]; n > 0 {
		args = append(args, "--max-rules", fmt.Sprint(n))
	}
	r.p = d.startProc(ctx, proc.Spec{Name: r.name, Path: d.bins[r.name], Env: d.env.WorkloadEnv(), Args: args})
	raw, err := proc.WaitFile(ctx, addrFile)
	if err != nil {
		d.t.Fatal(err)
	}
	var a struct{ GRPC, Metrics string }
	if err := json.Unmarshal(raw, &a); err != nil || a.GRPC == "" || a.Metrics == "" {
		d.t.Fatalf("%s addr file %q: %v", r.name, raw, err)
	}
	r.grpc, r.metrics = a.GRPC, a.Metrics
}

// readyz returns the status of a replica's /readyz.
func (d *deployment) readyz(ctx context.Context, r *replica) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.metrics+"/readyz", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// waitReady polls every running replica's /readyz until 200.
func (d *deployment) waitReady(ctx context.Context) {
	d.t.Helper()
	for _, r := range d.replicas {
		if r == nil || !r.p.Running() {
			continue
		}
		err := proc.Poll(ctx, 50*time.Millisecond, func(ctx context.Context) error {
			code, err := d.readyz(ctx, r)
			if err != nil {
				return err
			}
			if code != http.StatusOK {
				return fmt.Errorf("%s /readyz %d", r.name, code)
			}
			return nil
		})
		if err != nil {
			d.t.Fatal(err)
		}
	}
}

// ctlOut is the result of one mandatectl run.
type ctlOut struct {
	stdout, stderr string
	code           int
	took           time.Duration
}

func (o ctlOut) String() string {
	return fmt.Sprintf("exit %d\nstdout: %s\nstderr: %s", o.code, o.stdout, o.stderr)
}

// ctl runs the mandatectl copy of role (operator, orchestrator, probe,
// "ctl:"+agent ID) with its SVID from the Workload API: args[0] is the
// command; --addr (the cp's admin address unless the command is check)
// and --workload-api are added.
func (d *deployment) ctl(ctx context.Context, role string, args ...string) ctlOut {
	d.t.Helper()
	bin, ok := d.bins[role]
	if !ok {
		d.t.Fatalf("no mandatectl for %q", role)
	}
	full := []string{args[0], "--workload-api", d.env.SocketAddr()}
	if args[0] != "check" {
		full = append(full, "--addr", d.cpAddrs.Admin)
	}
	full = append(full, args[1:]...)
	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, bin, full...)
	cmd.Env = append(append(os.Environ(), d.env.WorkloadEnv()...), raceEnv...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	start := time.Now()
	err := cmd.Run()
	out := ctlOut{stdout: so.String(), stderr: se.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		out.code = ee.ExitCode()
	default:
		d.t.Fatalf("mandatectl %s: %v", strings.Join(full, " "), err)
	}
	return out
}

// mustCtl is ctl that fails the test unless the command exits 0.
func (d *deployment) mustCtl(ctx context.Context, role string, args ...string) ctlOut {
	d.t.Helper()
	out := d.ctl(ctx, role, args...)
	if out.code != 0 {
		d.t.Fatalf("mandatectl %s (as %s): %s", args[0], role, out)
	}
	return out
}

// issue mints a mandate as the orchestrator and returns the token and id.
func (d *deployment) issue(ctx context.Context, subject, task, intent string, extra ...string) (token, id string) {
	d.t.Helper()
	out := d.mustCtl(ctx, "orchestrator", append([]string{"issue", "--subject", subject, "--task", task, "--intent", intent}, extra...)...)
	return strings.TrimSpace(out.stdout), mandateID(d.t, out.stderr)
}

// expiry returns a mandate's expiry as `mandatectl inspect` shows it.
func (d *deployment) expiry(ctx context.Context, token string) time.Time {
	d.t.Helper()
	out := d.mustCtl(ctx, "operator", "inspect", token)
	for _, l := range strings.Split(out.stdout, "\n") {
		if rest, ok := strings.CutPrefix(l, "expires:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				if ts, err := time.Parse(time.RFC3339, f[0]); err == nil {
					return ts
				}
			}
		}
	}
	d.t.Fatalf("no expiry in inspect output: %s", out)
	return time.Time{}
}

// mandateID reads "mandate <id> ..." from issue/delegate's stderr.
func mandateID(t *testing.T, stderr string) string {
	t.Helper()
	for _, l := range strings.Split(stderr, "\n") {
		if rest, ok := strings.CutPrefix(l, "mandate "); ok {
			return strings.Fields(rest)[0]
		}
	}
	t.Fatalf("no mandate id in %q", stderr)
	return ""
}

// agent starts a testagent session for an agent ID of opts.agents.
func (d *deployment) agent(t *testing.T, id string) *agentproto.Session {
	t.Helper()
	bin, ok := d.bins["agent:"+id]
	if !ok {
		t.Fatalf("no testagent for %s", id)
	}
	name := "agent-" + strings.ReplaceAll(strings.TrimPrefix(id, "spiffe://example.org/agent/"), "/", "-")
	p := fmt.Sprintf("%s-%d", name, time.Now().UnixNano()%1e6)
	s, err := agentproto.Start(t, p, bin, append(d.env.WorkloadEnv(), raceEnv...),
		"-proxy", "https://"+d.proxyTLS, "-plain-proxy", "http://"+d.proxyPln, "-server-id", frontproxyID)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// do sends one request through an agent session.
func do(t *testing.T, ctx context.Context, s *agentproto.Session, cmd agentproto.Command) agentproto.Response {
	t.Helper()
	cmd.Op = agentproto.OpRequest
	r, err := s.Do(ctx, cmd)
	if err != nil {
		t.Fatal(err)
	}
	if r.Error != "" {
		t.Fatalf("request %s %s: %s", cmd.Method, cmd.Path, r.Error)
	}
	return r
}

// denyBody is the JSON body of a denial.
type denyBody struct {
	DecisionID      string `json:"decision_id"`
	Reason          string `json:"reason"`
	ApprovalRequest string `json:"approval_request"`
}

func parseDeny(t *testing.T, r agentproto.Response) denyBody {
	t.Helper()
	var b denyBody
	if err := json.Unmarshal([]byte(r.Body), &b); err != nil || b.DecisionID == "" {
		t.Fatalf("deny body %q (status %d): %v", r.Body, r.Status, err)
	}
	return b
}

// echoed is the echo upstream's description of an allowed request.
func echoedDecision(t *testing.T, r agentproto.Response) string {
	t.Helper()
	var s seenRequest
	if err := json.Unmarshal([]byte(r.Body), &s); err != nil {
		t.Fatalf("upstream body %q: %v", r.Body, err)
	}
	v := s.Headers["X-Mandate-Decision-Id"]
	if len(v) != 1 {
		t.Fatalf("upstream saw no single x-mandate-decision-id: %v", s.Headers)
	}
	if _, ok := s.Headers["X-Mandate"]; ok {
		t.Fatal("x-mandate reached the upstream")
	}
	return v[0]
}

// seenWithPrefix returns what the upstream received under a path prefix.
func (d *deployment) seenWithPrefix(t *testing.T, ctx context.Context, prefix string) []seenRequest {
	t.Helper()
	var out []seenRequest
	for _, s := range seen(t, ctx, d.echo) {
		if strings.HasPrefix(s.RequestURI, prefix) {
			out = append(out, s)
		}
	}
	return out
}

// decision is one decision log record.
type decision struct {
	Time       time.Time `json:"time"`
	DecisionID string    `json:"decision_id"`
	Result     string    `json:"result"`
	Reason     string    `json:"reason"`
	Subject    string    `json:"subject"`
	Method     string    `json:"method"`
	Path       string    `json:"path"`
	Intent     string    `json:"intent"`
	Task       string    `json:"task"`
	MandateID  string    `json:"mandate_id"`
	Chain      []string  `json:"chain"`
	Policy     string    `json:"policy"`
	Rule       string    `json:"rule"`
	CacheHit   bool      `json:"cache_hit"`
	replica    string
}

// decisions reads replica r's decision log (complete lines only).
func (d *deployment) decisions(t *testing.T, r *replica) []decision {
	t.Helper()
	b, err := os.ReadFile(r.declog)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []decision
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		var rec decision
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			continue // a line still being written
		}
		rec.replica = r.name
		out = append(out, rec)
	}
	return out
}

// allDecisions merges both replicas' logs, in time order.
func (d *deployment) allDecisions(t *testing.T) []decision {
	t.Helper()
	var out []decision
	for _, r := range d.replicas {
		out = append(out, d.decisions(t, r)...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out
}

// waitDecision polls both decision logs for the record with id (the log is
// written off the request path, so it may lag the response a little).
func (d *deployment) waitDecision(t *testing.T, ctx context.Context, id string) decision {
	t.Helper()
	var found decision
	err := proc.Poll(ctx, 20*time.Millisecond, func(context.Context) error {
		for _, rec := range d.allDecisions(t) {
			if rec.DecisionID == id {
				found = rec
				return nil
			}
		}
		return fmt.Errorf("decision %s not logged", id)
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// expectDecision checks a logged decision's fields (empty want = any).
func expectDecision(t *testing.T, got decision, want decision) {
	t.Helper()
	check := func(field, g, w string) {
		if w != "" && g != w {
			t.Errorf("decision %s on %s: %s = %q, want %q", got.DecisionID, got.replica, field, g, w)
		}
	}
	check("result", got.Result, want.Result)
	check("reason", got.Reason, want.Reason)
	check("subject", got.Subject, want.Subject)
	check("task", got.Task, want.Task)
	check("intent", got.Intent, want.Intent)
	check("mandate_id", got.MandateID, want.MandateID)
	check("rule", got.Rule, want.Rule)
	if want.Chain != nil && strings.Join(got.Chain, ",") != strings.Join(want.Chain, ",") {
		t.Errorf("decision %s: chain %v, want %v", got.DecisionID, got.Chain, want.Chain)
	}
}

// uniq returns prefix with a suffix unique within the deployment: every
// scenario works on fresh tasks and paths.
func (d *deployment) uniq(prefix string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.n++
	return fmt.Sprintf("%s-%d", prefix, d.n)
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }
