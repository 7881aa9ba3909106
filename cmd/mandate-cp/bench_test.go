package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

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
	node    string
	ch      checker
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
	for i := 0; ctx.Err() == nil; i++ {
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

// BenchmarkRevocationPropagation runs mandate-cp and three mandate-authz
// processes on loopback under steady Check load, revokes a fresh subject
// per iteration, and reports the time from the Revoke call to the first
// deny on every replica (p50, p99, max over replicas x iterations), and
// the allows served for a Check sent after the replica ACKed (must be 0).
func BenchmarkRevocationPropagation(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cp := startCP(b, b.TempDir(), "127.0.0.1:0", "127.0.0.1:0")
	c := adminClient(b, cp)
	var loads []*loadReplica
	for i := range 3 {
		node := fmt.Sprintf("authz-%d", i)
		loads = append(loads, &loadReplica{node: node, ch: newChecker(b, startAuthz(b, cp.addrs["xds"], node))})
	}
	waitFor(b, "3 replicas", func() bool {
		st, err := c.Status(ctx, &mandatev1.StatusRequest{})
		return err == nil && len(st.GetReplicas()) == 3
	})
	pv := applyReports(ctx, b, c)
	if w, err := c.WaitAcked(ctx, &mandatev1.WaitAckedRequest{TypeUrl: mandatev1.PolicyTypeURL, Version: pv}); err != nil || w.GetReplicas() != 3 {
		b.Fatalf("policy not acked: %v %v", w, err)
	}
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
		w, err := c.WaitAcked(ctx, &mandatev1.WaitAckedRequest{TypeUrl: mandatev1.RevocationTypeURL, Version: r.GetVersion(),
			Timeout: durationpb.New(10 * time.Second)})
		if err != nil || w.GetReplicas() != 3 {
			b.Fatalf("revocation not acked: %v %v", w, err)
		}
		st, err := c.Status(ctx, &mandatev1.StatusRequest{})
		if err != nil {
			b.Fatal(err)
		}
		ackedAt := map[string]time.Time{}
		for _, rs := range st.GetReplicas() {
			for _, ts := range rs.GetTypes() {
				if ts.GetTypeUrl() == mandatev1.RevocationTypeURL {
					ackedAt[rs.GetNodeId()] = ts.GetAckedAt().AsTime()
				}
			}
		}
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
