package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/mandate-dev/mandate/internal/etcdtest"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// sample is one Check on the subject being revoked.
type sample struct {
	sent, recv time.Time
	allowed    bool
}

// loadReplica sends Checks to one replica in a loop, alternating the
// subject under revocation with a control subject, and keeps the samples
// of the target.
type loadReplica struct {
	node string
	ch   checker
	// every paces the loop: one Check per tick (a steady rate); zero
	// sends them back to back (as many as the machine serves).
	every   time.Duration
	mu      sync.Mutex
	target  string
	samples []sample
	control atomic.Int64 // control-subject denies (must stay 0)
	errs    atomic.Int64
}

func (l *loadReplica) setTarget(s string) {
	l.mu.Lock()
	l.target, l.samples = s, l.samples[:0]
	l.mu.Unlock()
}

func (l *loadReplica) run(ctx context.Context) {
	const control = "spiffe://example.org/agent/control"
	var tick <-chan time.Time
	if l.every > 0 {
		t := time.NewTicker(l.every)
		defer t.Stop()
		tick = t.C
	}
	for i := 0; ctx.Err() == nil; i++ {
		if tick != nil {
			select {
			case <-ctx.Done():
				return
			case <-tick:
			}
		}
		l.mu.Lock()
		target := l.target
		l.mu.Unlock()
		subject := target
		if i%2 == 1 || target == "" {
			subject = control
		}
		sent := time.Now()
		ok, err := l.ch.allowed(ctx, subject)
		recv := time.Now()
		switch {
		case err != nil:
			if ctx.Err() == nil {
				l.errs.Add(1)
			}
		case subject == control:
			if !ok {
				l.control.Add(1)
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
	cp := start(b, binCP, append([]string{"--data-dir", b.TempDir(), "--plaintext", "--xds-listen", "127.0.0.1:0",
		"--admin-listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--log-level", "warn"}, benchCPArgs()...)...)
	var replicas []*proc
	for i := range 3 {
		replicas = append(replicas, startAuthz(b, cp.addrs["xds"], fmt.Sprintf("authz-%d", i)))
	}
	propagationLoads(b, []mandatev1.AdminClient{adminClient(b, cp)}, replicas)
	tracePhases(b, cp)
}

// benchCPArgs are extra mandate-cp flags of the propagation benchmarks
// (BENCH_CP_ARGS, split on spaces), to compare settings such as
// --sched-slice 0 in one checkout.
func benchCPArgs() []string { return strings.Fields(os.Getenv("BENCH_CP_ARGS")) }

// checkEvery is the pace of the steady load: 2,000 Checks/s per replica
// (6,000/s on the three), half of them on the subject being revoked, so
// a deny is seen within a millisecond of the replica enforcing it.
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
func propagationLoads(b *testing.B, admins []mandatev1.AdminClient, replicas []*proc) {
	b.Run("steady", func(b *testing.B) { runPropagation(b, admins, replicas, checkEvery(b)) })
	b.Run("saturating", func(b *testing.B) { runPropagation(b, admins, replicas, 0) })
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
	c := etcdtest.Start(b, 3)
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
		cp := start(b, binCP, a...)
		cps = append(cps, cp)
		admins = append(admins, adminClient(b, cp))
		xds = append(xds, cp.addrs["xds"])
	}
	var replicas []*proc
	for i := range 3 {
		list := slices.Concat(xds[i%n:], xds[:i%n]) // instance i first
		replicas = append(replicas, startAuthz(b, strings.Join(list, ","), fmt.Sprintf("authz-%d", i)))
	}
	b.Logf("%d mandate-cp instance(s) on 3 etcd members", n)
	propagationLoads(b, admins, replicas)
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

// runPropagation measures revocations through admins[0] reaching the
// replicas under load, one Check per replica every every (back to back
// when zero; see BenchmarkRevocationPropagation).
func runPropagation(b *testing.B, admins []mandatev1.AdminClient, replicas []*proc, every time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := admins[0]
	var loads []*loadReplica
	for i, r := range replicas {
		loads = append(loads, &loadReplica{node: fmt.Sprintf("authz-%d", i), ch: newChecker(b, r), every: every})
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

	var lat, acks, rpcs []time.Duration
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
		t0 := time.Now()
		r, err := c.Revoke(ctx, &mandatev1.RevokeRequest{Kind: "subject", Value: subject, Ttl: durationpb.New(time.Hour)})
		if err != nil {
			b.Fatal(err)
		}
		rpcs = append(rpcs, time.Since(t0))
		ackedAt := waitAckedEverywhere(ctx, b, admins, mandatev1.RevocationTypeURL, r.GetVersion())
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
			if os.Getenv("BENCH_TRACE") != "" && first.Sub(t0) > 20*time.Millisecond {
				b.Logf("iteration %d %s: deny after %v, ack after %v", i, l.node, first.Sub(t0), ackedAt[l.node].Sub(t0))
			}
			stale += n
		}
	}
	b.StopTimer()
	var ctrl, errs int64
	for _, l := range loads {
		ctrl += l.control.Load()
		errs += l.errs.Load()
	}
	slices.Sort(lat)
	slices.Sort(acks)
	slices.Sort(rpcs)
	pct := func(d []time.Duration, p float64) float64 {
		return float64(d[min(len(d)-1, int(p*float64(len(d))))]) / float64(time.Millisecond)
	}
	b.ReportMetric(pct(lat, 0.50), "p50-ms")
	b.ReportMetric(pct(lat, 0.99), "p99-ms")
	b.ReportMetric(pct(acks, 0.99), "ack-p99-ms")
	// The Revoke call itself: validation and a synced bbolt write.
	b.ReportMetric(pct(rpcs, 0.50), "revoke-rpc-p50-ms")
	b.ReportMetric(pct(rpcs, 0.99), "revoke-rpc-p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1])/float64(time.Millisecond), "max-ms")
	b.ReportMetric(float64(stale), "stale-allows")
	b.ReportMetric(float64(ctrl), "control-denies")
	if stale != 0 {
		b.Fatalf("%d allows served for Checks sent after the replica ACKed the revocation", stale)
	}
	if ctrl != 0 || errs != 0 {
		b.Fatalf("control subject denied %d times, %d Check errors", ctrl, errs)
	}
}
