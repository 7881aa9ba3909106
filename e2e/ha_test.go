package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mandate-dev/mandate/e2e/internal/proc"
	"github.com/mandate-dev/mandate/internal/envoyreq"
	"github.com/mandate-dev/mandate/internal/etcdtest"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// The high-availability harness (issue 11): a 3-member etcd cluster on
// loopback (internal/etcdtest), several mandate-cp instances on it,
// three mandate-authz replicas listing every instance in --xds-server,
// and steady Check load from this process with every request's outcome
// recorded, so "no allow served after revoke --wait returned" is checked
// request by request.
//
// Links are plaintext on loopback (--plaintext): these scenarios are
// about the store, the instances and the streams; identities and mTLS
// are what the SPIRE scenarios cover, and without SPIRE a deployment is
// up in seconds. Leases, grace and budgets are short (flags) to keep the
// suite quick.

// haControl is a subject never revoked: its allows prove the replicas
// decide, its denies that they failed closed.
const haControl = "spiffe://example.org/agent/control"

const haPolicy = `apiVersion: mandate.dev/v1
kind: Policy
metadata:
  name: reports
spec:
  rules:
    - name: agents-read-reports
      effect: allow
      subjects: ["spiffe://example.org/agent/**"]
      actions:
        - methods: [GET]
          paths: ["/reports/*"]
`

// haOptions configures an HA deployment; zero values take the defaults.
type haOptions struct {
	instances   int           // mandate-cp instances (3)
	replicas    int           // mandate-authz replicas (3)
	staleBudget time.Duration // replicas' --stale-budget (4s)
	leaseTTL    time.Duration // --etcd-lease-ttl (2s)
	grace       time.Duration // --etcd-grace (1s)
	// endpoints returns the etcd members instance i is given (default:
	// every member).
	endpoints func(i int, members []string) []string
}

// haFeatures are the parts of issue 11 this build has, found from the
// binaries' flags, so that the harness runs what exists.
type haFeatures struct {
	// serve: every instance serves xDS and the admin API on one etcd
	// (--etcd-grace, --instance-id), and mandate-authz takes a list of
	// control-plane addresses (its --xds-server help says
	// comma-separated).
	serve bool
}

var (
	haFeatOnce sync.Once
	haFeat     haFeatures
)

func detectHA(t *testing.T) haFeatures {
	t.Helper()
	haFeatOnce.Do(func() {
		help := func(bin string) string {
			out, _ := exec.Command(builtBinary(t, bin), "-h").CombinedOutput()
			return string(out)
		}
		cp, authz := help("mandate-cp"), help("mandate-authz")
		haFeat.serve = strings.Contains(cp, "-etcd-grace") && strings.Contains(cp, "-instance-id") &&
			strings.Contains(authz, "comma-separated")
	})
	return haFeat
}

// haInstance is one mandate-cp.
type haInstance struct {
	name                 string
	p                    *proc.Process
	args                 []string // without the listen addresses
	xds, admin, metrics  string
	endpoints            []string
	addrFile, configured string
}

// haReplica is one mandate-authz.
type haReplica struct {
	name, node    string
	p             *proc.Process
	grpc, metrics string
	check         authv3.AuthorizationClient
}

type haDeployment struct {
	t         *testing.T
	opts      haOptions
	feat      haFeatures
	dir       string
	logDir    string
	etcd      *etcdtest.Cluster
	instances []*haInstance
	replicas  []*haReplica
	load      *haLoad
	n         int
}

// deployHA starts etcd, the instances, the replicas and the load.
func deployHA(ctx context.Context, t *testing.T, opts haOptions) *haDeployment {
	t.Helper()
	start := time.Now()
	etcdtest.Binary(t) // skips without etcd
	feat := detectHA(t)
	if opts.instances == 0 {
		opts.instances = 3
	}
	if !feat.serve {
		opts.instances = 1 // a second instance would only wait as a standby
	}
	if opts.replicas == 0 {
		opts.replicas = 3
	}
	if opts.staleBudget == 0 {
		opts.staleBudget = 4 * time.Second
	}
	if opts.leaseTTL == 0 {
		opts.leaseTTL = 2 * time.Second
	}
	if opts.grace == 0 {
		opts.grace = time.Second
	}
	if opts.endpoints == nil {
		opts.endpoints = func(_ int, m []string) []string { return m }
	}
	d := &haDeployment{t: t, opts: opts, feat: feat, dir: t.TempDir()}
	d.logDir = filepath.Join(d.dir, "logs")
	if err := os.Mkdir(d.logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	d.etcd = etcdtest.Start(t, 3)
	kek := filepath.Join(d.dir, "kek")
	if err := os.WriteFile(kek, []byte("kek-1 "+base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range opts.instances {
		in := &haInstance{name: fmt.Sprintf("cp-%d", i), endpoints: opts.endpoints(i, d.etcd.Endpoints())}
		in.addrFile = filepath.Join(d.dir, in.name+".addr")
		in.args = []string{"--plaintext", "--kek-file", kek, "--log-level", "info",
			"--etcd-lease-ttl", opts.leaseTTL.String(), "--addr-file", in.addrFile}
		if feat.serve {
			in.args = append(in.args, "--instance-id", in.name, "--etcd-grace", opts.grace.String())
		}
		for _, ep := range in.endpoints {
			in.args = append(in.args, "--etcd-endpoint", ep)
		}
		d.instances = append(d.instances, in)
		d.startInstance(ctx, in, "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0")
	}
	pol := filepath.Join(d.dir, "policies")
	if err := os.MkdirAll(pol, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pol, "reports.yaml"), []byte(haPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	d.mustCtl(ctx, d.instances[0], "apply", "-f", pol)
	for i := range opts.replicas {
		d.startReplica(ctx, i)
	}
	d.waitReady(ctx)
	d.load = startLoad(ctx, t, d.replicas)
	d.load.waitServed(ctx, t, haControl, time.Time{})
	t.Logf("HA deployment up in %v: etcd 3 members, %d mandate-cp, %d mandate-authz (every instance serving: %v)",
		time.Since(start).Round(time.Millisecond), len(d.instances), len(d.replicas), feat.serve)
	return d
}

// startInstance starts (or restarts) an instance on the given addresses.
func (d *haDeployment) startInstance(ctx context.Context, in *haInstance, xds, admin, metrics string) {
	d.t.Helper()
	_ = os.Remove(in.addrFile)
	args := append(slices.Clone(in.args), "--xds-listen", xds, "--admin-listen", admin, "--metrics-addr", metrics)
	in.p = d.startProc(proc.Spec{Name: in.name, Path: builtBinary(d.t, "mandate-cp"), Args: args})
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	raw, err := proc.WaitFile(wctx, in.addrFile)
	if err != nil {
		d.t.Fatalf("%s: no address file: %v\n%s", in.name, err, in.p.Tail(20))
	}
	var a cpAddrs
	if err := json.Unmarshal(raw, &a); err != nil || a.XDS == "" || a.Admin == "" {
		d.t.Fatalf("%s address file %q: %v", in.name, raw, err)
	}
	in.xds, in.admin, in.metrics = a.XDS, a.Admin, a.Metrics
}

// restartInstance starts a stopped instance again on its addresses.
func (d *haDeployment) restartInstance(ctx context.Context, in *haInstance) {
	d.t.Helper()
	d.startInstance(ctx, in, in.xds, in.admin, in.metrics)
}

func (d *haDeployment) startProc(spec proc.Spec) *proc.Process {
	d.t.Helper()
	return startLogged(d.t, d.logDir, spec)
}

// xdsList is replica i's --xds-server: every instance, starting with
// instance i mod n, so the replicas spread over the instances.
func (d *haDeployment) xdsList(i int) string {
	var out []string
	for k := range d.instances {
		out = append(out, d.instances[(i+k)%len(d.instances)].xds)
	}
	return strings.Join(out, ",")
}

func (d *haDeployment) startReplica(ctx context.Context, i int) {
	d.t.Helper()
	r := &haReplica{name: fmt.Sprintf("authz-%d", i), node: fmt.Sprintf("authz-%d", i)}
	addrFile := filepath.Join(d.dir, r.name+".addr")
	args := []string{"--plaintext", "--xds-server", d.xdsList(i),
		"--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--addr-file", addrFile,
		"--node-id", r.node, "--stale-budget", d.opts.staleBudget.String(), "--decision-log", "off", "--log-level", "info"}
	r.p = d.startProc(proc.Spec{Name: r.name, Path: builtBinary(d.t, "mandate-authz"), Args: args})
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	raw, err := proc.WaitFile(wctx, addrFile)
	if err != nil {
		d.t.Fatalf("%s: %v", r.name, err)
	}
	var a struct{ GRPC, Metrics string }
	if err := json.Unmarshal(raw, &a); err != nil || a.GRPC == "" || a.Metrics == "" {
		d.t.Fatalf("%s address file %q: %v", r.name, raw, err)
	}
	r.grpc, r.metrics = a.GRPC, a.Metrics
	cc, err := grpc.NewClient(r.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { _ = cc.Close() })
	r.check = authv3.NewAuthorizationClient(cc)
	d.replicas = append(d.replicas, r)
}

func httpStatus(ctx context.Context, url string) int {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// waitReady waits for every running replica's /readyz.
func (d *haDeployment) waitReady(ctx context.Context) {
	d.t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, r := range d.replicas {
		err := proc.Poll(wctx, 20*time.Millisecond, func(ctx context.Context) error {
			if c := httpStatus(ctx, "http://"+r.metrics+"/readyz"); c != http.StatusOK {
				return fmt.Errorf("%s /readyz %d", r.name, c)
			}
			return nil
		})
		if err != nil {
			d.t.Fatal(err)
		}
	}
}

// ctl runs mandatectl against an instance's admin API.
func (d *haDeployment) ctl(ctx context.Context, in *haInstance, args ...string) ctlOut {
	d.t.Helper()
	full := append([]string{args[0], "--plaintext", "--addr", in.admin}, args[1:]...)
	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, builtBinary(d.t, "mandatectl"), full...)
	cmd.Env = append(os.Environ(), raceEnv...)
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

func (d *haDeployment) mustCtl(ctx context.Context, in *haInstance, args ...string) ctlOut {
	d.t.Helper()
	out := d.ctl(ctx, in, args...)
	if out.code != 0 {
		d.t.Fatalf("mandatectl %s via %s: %s", args[0], in.name, out)
	}
	return out
}

// subject returns a fresh agent subject and puts it under load.
func (d *haDeployment) subject(ctx context.Context, prefix string) string {
	d.t.Helper()
	d.n++
	s := fmt.Sprintf("spiffe://example.org/agent/%s-%d", prefix, d.n)
	since := time.Now()
	d.load.add(s)
	d.load.waitServed(ctx, d.t, s, since)
	return s
}

// revocation is one `mandatectl revoke --wait` and what came of it.
type revocation struct {
	subject  string
	via      string
	start    time.Time
	returned time.Time
	out      ctlOut
}

// revoke revokes subject through in with --wait.
func (d *haDeployment) revoke(ctx context.Context, in *haInstance, subject string) revocation {
	d.t.Helper()
	r := revocation{subject: subject, via: in.name, start: time.Now()}
	r.out = d.ctl(ctx, in, "revoke", "--subject", subject, "--for", "1h", "--reason", "e2e-ha", "--wait", "--wait-timeout", "20s")
	r.returned = time.Now()
	return r
}

// checkRevoked checks, over the load's records, that no allow for a
// successful revocation's subject was sent after its --wait returned
// (sent, not answered: a request in flight at the return may still be
// allowed) and that every replica denies it now.
func (d *haDeployment) checkRevoked(ctx context.Context, revs []revocation) {
	d.t.Helper()
	for _, r := range revs {
		if r.out.code != 0 {
			continue
		}
		for _, rec := range d.load.records(r.subject) {
			if rec.allowed && rec.sent.After(r.returned) {
				d.t.Errorf("%s allowed %s at %v, %v after revoke --wait (via %s) returned",
					d.replicas[rec.replica].name, r.subject, rec.sent.Format("15:04:05.000"), rec.sent.Sub(r.returned), r.via)
			}
		}
		since := time.Now()
		d.load.waitDenied(ctx, d.t, r.subject, since, "revoked")
	}
}

// placement returns the instances the fleet-wide status, read through in,
// shows replica r connected to.
func (d *haDeployment) placement(ctx context.Context, in *haInstance, r *haReplica) ([]string, error) {
	cc, err := grpc.NewClient(in.admin, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := mandatev1.NewAdminClient(cc).Status(cctx, &mandatev1.StatusRequest{})
	if err != nil {
		return nil, err
	}
	var on []string
	for _, rs := range st.GetReplicas() {
		if rs.GetNodeId() == r.node && rs.GetConnected() {
			on = append(on, rs.GetInstance())
		}
	}
	return on, nil
}

// waitPlacement waits until the fleet-wide status, read through in, shows
// replica r connected to instance want, and only there.
func (d *haDeployment) waitPlacement(ctx context.Context, in *haInstance, r *haReplica, want string) {
	d.t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	err := proc.Poll(wctx, 20*time.Millisecond, func(ctx context.Context) error {
		on, err := d.placement(ctx, in, r)
		if err != nil {
			return err
		}
		if !slices.Equal(on, []string{want}) {
			return fmt.Errorf("%s connected to %v", r.node, on)
		}
		return nil
	})
	if err != nil {
		d.t.Fatalf("%s not on instance %s (status through %s): %v", r.name, want, in.name, err)
	}
}

// waitMoved waits until the fleet-wide status, read through one of via,
// shows replica r connected to one of via, and returns when it first did
// (zero when not within limit).
func (d *haDeployment) waitMoved(ctx context.Context, r *haReplica, via []*haInstance, limit time.Duration) (time.Time, string) {
	d.t.Helper()
	wctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for wctx.Err() == nil {
		for _, in := range via {
			on, err := d.placement(wctx, in, r)
			if err != nil {
				continue
			}
			for _, name := range on {
				if slices.ContainsFunc(via, func(v *haInstance) bool { return v.name == name }) {
					return time.Now(), name
				}
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Time{}, ""
}

// checkRec is the outcome of one Check.
type checkRec struct {
	replica    int
	subject    string
	sent, recv time.Time
	allowed    bool
	reason     string // the deny reason, or "error: ..." for an RPC error
}

// haLoad sends Checks to every replica in a steady loop (one worker per
// replica, a request every 5 ms), cycling over the subjects under load,
// and records every outcome.
type haLoad struct {
	n        int // replicas, one worker each
	mu       sync.Mutex
	subjects []string
	recs     []checkRec
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

func startLoad(ctx context.Context, t *testing.T, replicas []*haReplica) *haLoad {
	l := &haLoad{n: len(replicas), subjects: []string{haControl}}
	lctx, cancel := context.WithCancel(ctx)
	l.cancel = cancel
	for i, r := range replicas {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.run(lctx, i, r)
		}()
	}
	t.Cleanup(l.stop)
	return l
}

func (l *haLoad) stop() {
	l.cancel()
	l.wg.Wait()
}

func (l *haLoad) add(subject string) {
	l.mu.Lock()
	l.subjects = append(l.subjects, subject)
	l.mu.Unlock()
}

func (l *haLoad) run(ctx context.Context, i int, r *haReplica) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		l.mu.Lock()
		// The control subject every other request, the others in turn.
		subject := haControl
		if n%2 == 1 && len(l.subjects) > 1 {
			subject = l.subjects[1+(n/2)%(len(l.subjects)-1)]
		}
		l.mu.Unlock()
		rec := checkRec{replica: i, subject: subject, sent: time.Now()}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := r.check.Check(cctx, envoyreq.Build(envoyreq.Params{Principal: subject, Method: "GET",
			Path: "/reports/q", Host: "reports", Time: rec.sent}))
		cancel()
		rec.recv = time.Now()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			rec.reason = "error: " + err.Error()
		case codes.Code(resp.GetStatus().GetCode()) == codes.OK:
			rec.allowed = true
		default:
			var body struct{ Reason string }
			_ = json.Unmarshal([]byte(resp.GetDeniedResponse().GetBody()), &body)
			rec.reason = body.Reason
		}
		l.mu.Lock()
		l.recs = append(l.recs, rec)
		l.mu.Unlock()
	}
}

// records returns the outcomes for subject ("" = all), in send order per
// replica.
func (l *haLoad) records(subject string) []checkRec {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []checkRec
	for _, r := range l.recs {
		if subject == "" || r.subject == subject {
			out = append(out, r)
		}
	}
	return out
}

// waitServed waits until every replica allowed subject in a request sent
// after since.
func (l *haLoad) waitServed(ctx context.Context, t *testing.T, subject string, since time.Time) {
	t.Helper()
	l.waitEvery(ctx, t, subject, since, func(r checkRec) bool { return r.allowed }, "allowed")
}

// waitDenied waits until every replica denied subject with reason in a
// request sent after since.
func (l *haLoad) waitDenied(ctx context.Context, t *testing.T, subject string, since time.Time, reason string) {
	t.Helper()
	l.waitEvery(ctx, t, subject, since, func(r checkRec) bool { return !r.allowed && r.reason == reason }, "denied "+reason)
}

func (l *haLoad) waitEvery(ctx context.Context, t *testing.T, subject string, since time.Time, ok func(checkRec) bool, what string) {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	err := proc.Poll(wctx, 10*time.Millisecond, func(context.Context) error {
		seen := map[int]bool{}
		for _, r := range l.records(subject) {
			if !r.sent.Before(since) && ok(r) {
				seen[r.replica] = true
			}
		}
		if len(seen) < l.n {
			return fmt.Errorf("%d of %d replicas", len(seen), l.n)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s not %s by every replica: %v", subject, what, err)
	}
}

// outcomes counts, per replica, the control subject's outcomes sent in
// [from, to): allows and denies by reason.
func (l *haLoad) outcomes(from, to time.Time) map[int]map[string]int {
	out := map[int]map[string]int{}
	for _, r := range l.records(haControl) {
		if r.sent.Before(from) || !r.sent.Before(to) {
			continue
		}
		if out[r.replica] == nil {
			out[r.replica] = map[string]int{}
		}
		k := "allow"
		if !r.allowed {
			k = r.reason
		}
		out[r.replica][k]++
	}
	return out
}

// checkControlServed fails the test when the control subject was denied
// (or failed) on any replica in [from, to): the replicas kept deciding.
func (d *haDeployment) checkControlServed(from, to time.Time) {
	d.t.Helper()
	for i, o := range d.load.outcomes(from, to) {
		for k, n := range o {
			if k != "allow" {
				d.t.Errorf("%s: %d control requests %s between %v and %v (outcomes %v)", d.replicas[i].name, n, k,
					from.Format("15:04:05.000"), to.Format("15:04:05.000"), o)
			}
		}
	}
}
