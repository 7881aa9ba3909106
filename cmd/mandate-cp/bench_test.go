package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/mandate-dev/mandate/internal/etcdtest"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// sample is one Check on the subject being revoked.
type sample struct {
	sent, recv time.Time
	allowed    bool
}

// controlSubject is never revoked: a deny for it is a revocation applied
// to the wrong subject.
const controlSubject = "spiffe://example.org/agent/control"

// loadReplica sends Checks to one replica from two loops: the probe, on
// the subject under revocation (the control subject while there is
// none), whose samples it keeps, and the control loop, on the control
// subject, a quarter as often. The probe asks 4 times in 5 instead of
// every other time (every 625 µs instead of 1 ms at the default pace),
// which shortens the time between the replica enforcing a revocation
// and the first Check that shows it.
type loadReplica struct {
	node string
	ch   checker
	// every paces the load: one Check per tick (a steady rate), 4 in 5
	// from the probe and 1 in 5 from the control loop; zero sends them
	// back to back from each loop (as many as the machine serves).
	every   time.Duration
	control *authv3.CheckRequest
	mu      sync.Mutex
	target  string
	probe   *authv3.CheckRequest
	samples []sample
	denied  atomic.Int64 // control-subject denies (must stay 0)
	errs    atomic.Int64
}

func newLoadReplica(node string, ch checker, every time.Duration) *loadReplica {
	l := &loadReplica{node: node, ch: ch, every: every, control: checkRequest(controlSubject)}
	l.probe = l.control
	return l
}

func (l *loadReplica) setTarget(s string) {
	req := checkRequest(s)
	l.mu.Lock()
	l.target, l.probe, l.samples = s, req, l.samples[:0]
	l.mu.Unlock()
}

// pace returns a ticker's channel for one Check every d, or nil (back to
// back) when d is zero.
func pace(d time.Duration) (<-chan time.Time, func()) {
	if d <= 0 {
		return nil, func() {}
	}
	t := time.NewTicker(d)
	return t.C, t.Stop
}

// wait waits for the next tick (none when tick is nil) and reports
// whether ctx is still live.
func wait(ctx context.Context, tick <-chan time.Time) bool {
	if tick == nil {
		return ctx.Err() == nil
	}
	select {
	case <-ctx.Done():
		return false
	case <-tick:
		return true
	}
}

func (l *loadReplica) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); l.runControl(ctx) }()
	defer wg.Wait()
	tick, stop := pace(l.every * 5 / 4)
	defer stop()
	for wait(ctx, tick) {
		l.mu.Lock()
		target, req := l.target, l.probe
		l.mu.Unlock()
		sent := time.Now()
		ok, err := l.ch.check(ctx, req)
		recv := time.Now()
		switch {
		case err != nil:
			if ctx.Err() == nil {
				l.errs.Add(1)
			}
		case target == "":
			if !ok {
				l.denied.Add(1)
			}
		default:
			l.mu.Lock()
			if l.target == target {
				l.samples = append(l.samples, sample{sent: sent, recv: recv, allowed: ok})
			}
			l.mu.Unlock()
		}
	}
}

func (l *loadReplica) runControl(ctx context.Context) {
	tick, stop := pace(l.every * 5)
	defer stop()
	for wait(ctx, tick) {
		ok, err := l.ch.check(ctx, l.control)
		switch {
		case err != nil:
			if ctx.Err() == nil {
				l.errs.Add(1)
			}
		case !ok:
			l.denied.Add(1)
		}
	}
}

// roundTrips returns the round-trip times of the probe's Checks since
// the target was set.
func (l *loadReplica) roundTrips() []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]time.Duration, len(l.samples))
	for i, s := range l.samples {
		out[i] = s.recv.Sub(s.sent)
	}
	return out
}

// firstDeny returns when the first deny after t0 arrived, and how many
// allows were sent after acked (stale allows).
func (l *loadReplica) firstDeny(t0, acked time.Time) (time.Time, int, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var first time.Time
	stale := 0
	for _, s := range l.samples {
		if !s.allowed && first.IsZero() && !s.sent.Before(t0) {
			first = s.recv
		}
		if s.allowed && s.sent.After(acked) {
			stale++
		}
	}
	return first, stale, !first.IsZero()
}

// BenchmarkRevocationPropagation runs mandate-cp (bbolt) and three
// mandate-authz processes on loopback under Check load, revokes a fresh
// subject per iteration, and reports the time from the Revoke call to the
// first deny on every replica (p50, p99, max over replicas x iterations),
// and the allows served for a Check sent after the replica ACKed (must be
// 0). See propagationLoads for the two loads.
func BenchmarkRevocationPropagation(b *testing.B) {
	procs := benchProcs(b)
	defer procs.harness()()
	cp := startEnv(b, procs.env(procs.cp), binCP, append([]string{"--data-dir", b.TempDir(), "--plaintext", "--xds-listen", "127.0.0.1:0",
		"--admin-listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--log-level", "warn"}, benchCPArgs()...)...)
	var replicas []*proc
	for i := range 3 {
		replicas = append(replicas, startAuthzEnv(b, procs.env(procs.authz), cp.addrs["xds"], fmt.Sprintf("authz-%d", i)))
	}
	b.Logf("GOMAXPROCS: %s", procs)
	propagationLoads(b, []mandatev1.AdminClient{adminClient(b, cp)}, startRevoker(b, cp.addrs["admin"], procs.load, "fsync:"+b.TempDir()), replicas)
	tracePhases(b, cp)
}

// gomaxprocs is the GOMAXPROCS of each process of a propagation
// benchmark (0: Go's default, every core).
type gomaxprocs struct{ load, authz, cp, etcd int }

// benchProcs is how many Ps each process of a propagation benchmark
// runs with. By default one each, as on a Kubernetes node where every
// pod has a 1-CPU limit (Go sets GOMAXPROCS from the container's CPU
// quota): the load generator (this process, standing in for clients on
// other machines), the replicas and etcd's members; a bbolt mandate-cp
// keeps every core, since its commits block a thread in fdatasync. Six
// to ten processes with two Ps each on two cores spend their CPU on the
// Go scheduler's idle spinning and cross-thread wake-ups, which shows
// in the tail of every hop of a revocation (the README's "Revocation
// propagation" has both settings, measured interleaved: the p50 about
// 1 ms lower on bbolt and 1 to 4 ms on etcd with one P each).
// BENCH_GOMAXPROCS=all gives every process every core.
func benchProcs(tb tb) gomaxprocs {
	switch v := os.Getenv("BENCH_GOMAXPROCS"); v {
	case "":
		return gomaxprocs{load: 1, authz: 1, etcd: 1}
	case "all":
		return gomaxprocs{}
	default:
		tb.Fatalf("BENCH_GOMAXPROCS=%q: want empty or all", v)
		return gomaxprocs{}
	}
}

// env is the environment entry that sets n Ps (none for the default).
func (g gomaxprocs) env(n int) []string {
	if n == 0 {
		return nil
	}
	return []string{fmt.Sprintf("GOMAXPROCS=%d", n)}
}

// harness sets this process's Ps and returns what restores them.
func (g gomaxprocs) harness() func() {
	if g.load == 0 {
		return func() {}
	}
	old := runtime.GOMAXPROCS(g.load)
	return func() { runtime.GOMAXPROCS(old) }
}

func (g gomaxprocs) String() string {
	n := func(v int) string {
		if v == 0 {
			return "all"
		}
		return strconv.Itoa(v)
	}
	return fmt.Sprintf("load %s, replicas %s, mandate-cp %s, etcd %s", n(g.load), n(g.authz), n(g.cp), n(g.etcd))
}

// benchCPArgs are extra mandate-cp flags of the propagation benchmarks
// (BENCH_CP_ARGS, split on spaces), to compare settings such as
// --sched-slice 0 in one checkout.
func benchCPArgs() []string { return strings.Fields(os.Getenv("BENCH_CP_ARGS")) }

// checkEvery is the pace of the steady load: 2,000 Checks/s per replica
// (6,000/s on the three), 1,600/s of them on the subject being revoked,
// so a deny is seen within 0.625 ms (plus a Check's round trip) of the
// replica enforcing it.
// BENCH_CHECK_EVERY (a duration) sets another pace.
func checkEvery(tb tb) time.Duration {
	v := os.Getenv("BENCH_CHECK_EVERY")
	if v == "" {
		return 500 * time.Microsecond
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		tb.Fatalf("BENCH_CHECK_EVERY=%q: want a positive duration", v)
	}
	return d
}

// propagationLoads measures propagation under two loads, on the same
// processes: "steady", each replica receiving Checks at a fixed rate
// (checkEvery) that leaves the machine CPU to spare, as a replica in
// production runs; and "saturating", one Check after another from each
// load loop, so that the load, the three replicas and mandate-cp compete
// for every core of the machine and each wake-up of mandate-cp (the
// request, each fdatasync of the commit, the push) waits for a core.
//
// The Revoke calls come from rev, a process of their own (from this one
// when rev is nil; see revoker).
func propagationLoads(b *testing.B, admins []mandatev1.AdminClient, rev *revoker, replicas []*proc) {
	b.Run("steady", func(b *testing.B) { runPropagation(b, admins, rev, replicas, checkEvery(b)) })
	b.Run("saturating", func(b *testing.B) { runPropagation(b, admins, rev, replicas, 0) })
}

// tracePhases logs the instance's write-phase histogram of revocations
// (mandate_cp_write_phase_seconds) when BENCH_TRACE is set: where the
// Revoke call's time went.
func tracePhases(b *testing.B, cp *proc) {
	if os.Getenv("BENCH_TRACE") == "" {
		return
	}
	all := os.Getenv("BENCH_TRACE") == "all"
	for _, l := range metricLines(b, cp) {
		if all && strings.HasPrefix(l, "mandate_") && !strings.Contains(l, "_bucket") ||
			strings.HasPrefix(l, "mandate_cp_write_phase_seconds") && strings.Contains(l, `type="Revocation"`) {
			b.Log(l)
		}
	}
}

// BenchmarkRevocationPropagationEtcd is BenchmarkRevocationPropagation
// with the state in a 3-member etcd cluster on loopback: the Revoke is an
// etcd transaction. When every instance serves (--etcd-grace), three
// instances run and replica i follows instance i, so two of the three
// replicas learn the revocation through their instance's etcd watch;
// otherwise one instance serves them all (a second would only wait).
func BenchmarkRevocationPropagationEtcd(b *testing.B) {
	procs := benchProcs(b)
	// No fdatasync in an etcd-backed mandate-cp: one P serves it.
	procs.cp = procs.etcd
	defer procs.harness()()
	c := etcdtest.StartEnv(b, 3, procs.env(procs.etcd))
	args := []string{"--plaintext", "--xds-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--metrics-addr", "127.0.0.1:0", "--log-level", "warn", "--kek-file", writeKEK(b)}
	args = append(args, benchCPArgs()...)
	for _, ep := range c.Endpoints() {
		args = append(args, "--etcd-endpoint", ep)
	}
	n := 1
	if everyInstanceServes(b) {
		n = 3
	}
	var cps []*proc
	var admins []mandatev1.AdminClient
	var xds []string
	for i := range n {
		a := args
		if n > 1 {
			a = append(slices.Clone(args), "--instance-id", fmt.Sprintf("cp-%d", i))
		}
		cp := startEnv(b, procs.env(procs.cp), binCP, a...)
		cps = append(cps, cp)
		admins = append(admins, adminClient(b, cp))
		xds = append(xds, cp.addrs["xds"])
	}
	var replicas []*proc
	for i := range 3 {
		list := slices.Concat(xds[i%n:], xds[:i%n]) // instance i first
		replicas = append(replicas, startAuthzEnv(b, procs.env(procs.authz), strings.Join(list, ","), fmt.Sprintf("authz-%d", i)))
	}
	b.Logf("%d mandate-cp instance(s) on 3 etcd members; GOMAXPROCS: %s", n, procs)
	propagationLoads(b, admins, startRevoker(b, cps[0].addrs["admin"], procs.load, "etcd:"+strings.Join(c.Endpoints(), ",")), replicas)
	tracePhases(b, cps[0])
}

// everyInstanceServes reports whether this mandate-cp serves from every
// instance on one etcd (it has --etcd-grace).
func everyInstanceServes(tb tb) bool {
	out, _ := exec.Command(binCP, "-h").CombinedOutput()
	return strings.Contains(string(out), "-etcd-grace")
}

// replicaStatus merges the instances' views of the replicas (each
// instance knows the ones connected to it; a fleet-wide view lists each
// everywhere): per node id, the connected entry.
func replicaStatus(ctx context.Context, admins []mandatev1.AdminClient) (map[string]*mandatev1.ReplicaStatus, error) {
	out := map[string]*mandatev1.ReplicaStatus{}
	for _, a := range admins {
		st, err := a.Status(ctx, &mandatev1.StatusRequest{})
		if err != nil {
			return nil, err
		}
		for _, r := range st.GetReplicas() {
			if old, ok := out[r.GetNodeId()]; !ok || !old.GetConnected() {
				out[r.GetNodeId()] = r
			}
		}
	}
	return out, nil
}

// waitAckedEverywhere waits until every instance's replicas ACKed version
// of typeURL and returns when each replica ACKed it.
func waitAckedEverywhere(ctx context.Context, tb tb, admins []mandatev1.AdminClient, typeURL, version string) map[string]time.Time {
	tb.Helper()
	for _, a := range admins {
		if _, err := a.WaitAcked(ctx, &mandatev1.WaitAckedRequest{TypeUrl: typeURL, Version: version,
			Timeout: durationpb.New(10 * time.Second)}); err != nil {
			tb.Fatalf("%s version %s not acked: %v", typeURL, version, err)
		}
	}
	want := mustVersion(tb, version)
	acked := map[string]time.Time{}
	st, err := replicaStatus(ctx, admins)
	if err != nil {
		tb.Fatal(err)
	}
	for node, r := range st {
		for _, ts := range r.GetTypes() {
			if ts.GetTypeUrl() == typeURL && ts.GetAckedVersion() != "" && mustVersion(tb, ts.GetAckedVersion()) >= want {
				acked[node] = ts.GetAckedAt().AsTime()
			}
		}
	}
	if len(acked) != 3 {
		tb.Fatalf("%s version %s acked by %d replicas, want 3: %v", typeURL, version, len(acked), st)
	}
	return acked
}

// revoke revokes subject through rev, or through c when rev is nil, and
// returns when the call began, how long it took and the version.
func revoke(ctx context.Context, c mandatev1.AdminClient, rev *revoker, subject string) (time.Time, time.Duration, string, error) {
	if rev != nil {
		return rev.revoke(subject)
	}
	t0 := time.Now()
	r, err := c.Revoke(ctx, &mandatev1.RevokeRequest{Kind: "subject", Value: subject, Ttl: durationpb.New(time.Hour)})
	return t0, time.Since(t0), r.GetVersion(), err
}

// runPropagation measures revocations through admins[0] (sent by rev,
// or from this process when nil) reaching the replicas under load, one
// Check per replica every every (back to back when zero; see
// BenchmarkRevocationPropagation).
func runPropagation(b *testing.B, admins []mandatev1.AdminClient, rev *revoker, replicas []*proc, every time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := admins[0]
	var loads []*loadReplica
	for i, r := range replicas {
		loads = append(loads, newLoadReplica(fmt.Sprintf("authz-%d", i), newChecker(b, r), every))
	}
	waitFor(b, "3 replicas", func() bool {
		st, err := replicaStatus(ctx, admins)
		return err == nil && len(st) == 3
	})
	waitAckedEverywhere(ctx, b, admins, mandatev1.PolicyTypeURL, applyReports(ctx, b, c))
	var wg sync.WaitGroup
	for _, l := range loads {
		wg.Add(1)
		go func() { defer wg.Done(); l.run(ctx) }()
	}
	defer func() { cancel(); wg.Wait() }()

	var lat, acks, rpcs, rtts, writes []time.Duration
	byNode := map[string][]time.Duration{}
	stale := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		subject := fmt.Sprintf("spiffe://example.org/agent/bench-%d-%d", time.Now().UnixNano(), i)
		for _, l := range loads {
			l.setTarget(subject)
		}
		// Every replica has served (and cached) an allow for the subject.
		waitFor(b, "allow before revoke", func() bool {
			for _, l := range loads {
				l.mu.Lock()
				n := len(l.samples)
				l.mu.Unlock()
				if n == 0 {
					return false
				}
			}
			return true
		})
		t0, rpc, version, err := revoke(ctx, c, rev, subject)
		if err != nil {
			b.Fatal(err)
		}
		rpcs = append(rpcs, rpc)
		ackedAt := waitAckedEverywhere(ctx, b, admins, mandatev1.RevocationTypeURL, version)
		for _, l := range loads {
			var first time.Time
			var n int
			waitFor(b, "deny on "+l.node, func() bool {
				var ok bool
				first, n, ok = l.firstDeny(t0, ackedAt[l.node])
				return ok
			})
			lat = append(lat, first.Sub(t0))
			acks = append(acks, ackedAt[l.node].Sub(t0))
			byNode[l.node] = append(byNode[l.node], first.Sub(t0))
			if os.Getenv("BENCH_TRACE") != "" && first.Sub(t0) > 20*time.Millisecond {
				b.Logf("iteration %d %s: deny after %v, ack after %v", i, l.node, first.Sub(t0), ackedAt[l.node].Sub(t0))
			}
			stale += n
			rtts = append(rtts, l.roundTrips()...)
		}
		if rev != nil {
			// The store's own write under the same load, between two
			// revocations: the floor under a Revoke's commit.
			d, err := rev.storeWrite()
			if err != nil {
				b.Fatal(err)
			}
			writes = append(writes, d)
		}
	}
	b.StopTimer()
	var ctrl, errs int64
	for _, l := range loads {
		ctrl += l.denied.Load()
		errs += l.errs.Load()
	}
	slices.Sort(lat)
	slices.Sort(acks)
	slices.Sort(rpcs)
	slices.Sort(rtts)
	pct := func(d []time.Duration, p float64) float64 {
		return float64(d[min(len(d)-1, int(p*float64(len(d))))]) / float64(time.Millisecond)
	}
	if os.Getenv("BENCH_TRACE") != "" {
		for _, l := range loads {
			d := byNode[l.node]
			slices.Sort(d)
			b.Logf("%s: deny p50 %.2f ms, p99 %.2f ms", l.node, pct(d, 0.5), pct(d, 0.99))
		}
	}
	b.ReportMetric(pct(lat, 0.50), "p50-ms")
	b.ReportMetric(pct(lat, 0.99), "p99-ms")
	b.ReportMetric(pct(acks, 0.99), "ack-p99-ms")
	// The Revoke call itself: validation and a synced bbolt write.
	b.ReportMetric(pct(rpcs, 0.50), "revoke-rpc-p50-ms")
	b.ReportMetric(pct(rpcs, 0.99), "revoke-rpc-p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1])/float64(time.Millisecond), "max-ms")
	// What a deny's measured time includes besides the propagation: the
	// probe's Check round trip (half a tick passes before it on average).
	b.ReportMetric(pct(rtts, 0.99), "check-rtt-p99-ms")
	if len(writes) > 0 {
		// A bare write of the store (see newStoreWrite), timed between
		// revocations: what every revocation's commit costs at least.
		slices.Sort(writes)
		b.ReportMetric(pct(writes, 0.50), "store-write-p50-ms")
		b.ReportMetric(pct(writes, 0.99), "store-write-p99-ms")
	}
	b.ReportMetric(float64(stale), "stale-allows")
	b.ReportMetric(float64(ctrl), "control-denies")
	if stale != 0 {
		b.Fatalf("%d allows served for Checks sent after the replica ACKed the revocation", stale)
	}
	if ctrl != 0 || errs != 0 {
		b.Fatalf("control subject denied %d times, %d Check errors", ctrl, errs)
	}
}
