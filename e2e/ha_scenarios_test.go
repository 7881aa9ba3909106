package e2e

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/e2e/internal/proc"
)

// missingServe names what a scenario needs that its build may not have
// yet (issue 11).
const missingServe = "needs HA-serve (issue 11 items 3 and 7): every mandate-cp instance serving xDS and the admin API on one etcd " +
	"(--etcd-grace closing the streams of an instance without etcd) and mandate-authz failing over along a --xds-server list"

func haContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// revoker revokes fresh subjects with --wait in a loop, through the
// instance pick returns, until stopped.
type revoker struct {
	d     *haDeployment
	pick  func() *haInstance
	mu    sync.Mutex
	revs  []revocation
	done  chan struct{}
	stopc chan struct{}
	n     atomic.Int64
}

func startRevoker(ctx context.Context, d *haDeployment, prefix string, pick func() *haInstance) *revoker {
	rv := &revoker{d: d, pick: pick, done: make(chan struct{}), stopc: make(chan struct{})}
	go func() {
		defer close(rv.done)
		for {
			select {
			case <-rv.stopc:
				return
			case <-ctx.Done():
				return
			default:
			}
			s := d.subject(ctx, prefix)
			r := d.revoke(ctx, rv.pick(), s)
			rv.mu.Lock()
			rv.revs = append(rv.revs, r)
			rv.mu.Unlock()
			rv.n.Add(1)
		}
	}()
	return rv
}

// waitCount waits until n more revocations than now have returned.
func (rv *revoker) waitCount(ctx context.Context, t *testing.T, n int64) {
	t.Helper()
	want := rv.n.Load() + n
	if err := proc.Poll(ctx, 10*time.Millisecond, func(context.Context) error {
		if rv.n.Load() < want {
			return errorf("%d revocations", rv.n.Load())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func (rv *revoker) stop() []revocation {
	close(rv.stopc)
	<-rv.done
	rv.mu.Lock()
	defer rv.mu.Unlock()
	return rv.revs
}

// requireSucceeded fails the test for every revocation that failed.
func requireSucceeded(t *testing.T, revs []revocation, what string) {
	t.Helper()
	for _, r := range revs {
		if r.out.code != 0 {
			t.Errorf("%s: revoke --wait %s via %s failed after %v: %s", what, r.subject, r.via, r.out.took.Round(time.Millisecond), r.out)
		}
	}
}

// TestHAEtcdMemberLoss: one etcd member killed under load; writes go on
// through every instance (revoke --wait succeeds and is enforced, no
// allow after it returned), the replicas never stop deciding, and the
// member rejoins.
func TestHAEtcdMemberLoss(t *testing.T) {
	ctx := haContext(t)
	d := deployHA(ctx, t, haOptions{})
	var revs []revocation
	revs = append(revs, d.revoke(ctx, d.instances[0], d.subject(ctx, "before")))
	requireSucceeded(t, revs, "before the member loss")

	t0 := time.Now()
	d.etcd.Kill(0) // the first endpoint of every instance
	var during []revocation
	for _, in := range d.instances {
		during = append(during, d.revoke(ctx, in, d.subject(ctx, "member-down")))
	}
	requireSucceeded(t, during, "one etcd member down")
	for _, r := range during {
		t.Logf("one member down: revoke --wait via %s took %v", r.via, r.out.took.Round(time.Millisecond))
	}
	d.etcd.Restart(0)
	after := d.revoke(ctx, d.instances[len(d.instances)-1], d.subject(ctx, "member-back"))
	requireSucceeded(t, []revocation{after}, "member back")
	d.checkRevoked(ctx, append(append(revs, during...), after))
	d.checkControlServed(t0, time.Now())
}

// TestHAInstanceKill: kill -9 the instance replica authz-0 is connected
// to while revocations go on through the others: authz-0 fails over
// within 2 s, every revocation is enforced everywhere, no allow is
// served after a revoke --wait returned, no replica stops deciding.
func TestHAInstanceKill(t *testing.T) {
	if !detectHA(t).serve {
		t.Skip(missingServe)
	}
	ctx := haContext(t)
	d := deployHA(ctx, t, haOptions{})
	victim, r0 := d.instances[0], d.replicas[0] // authz-0 lists cp-0 first
	d.waitPlacement(ctx, d.instances[1], r0, victim.name)
	var k atomic.Int64
	rv := startRevoker(ctx, d, "kill", func() *haInstance { return d.instances[1+int(k.Add(1))%(len(d.instances)-1)] })
	rv.waitCount(ctx, t, 2)

	t0 := time.Now()
	victim.p.Kill()
	moved, to := d.waitMoved(ctx, r0, d.instances[1:], 10*time.Second)
	switch {
	case moved.IsZero():
		t.Errorf("%s not connected to another instance within 10s of the kill -9 of %s", r0.name, victim.name)
	default:
		t.Logf("%s connected to %s %v after the kill -9 of %s", r0.name, to, moved.Sub(t0).Round(time.Millisecond), victim.name)
		if moved.Sub(t0) > 2*time.Second {
			t.Errorf("%s failed over in %v, want <= 2s", r0.name, moved.Sub(t0))
		}
	}
	rv.waitCount(ctx, t, 3)
	revs := rv.stop()
	requireSucceeded(t, revs, "revocations through the surviving instances")
	d.checkRevoked(ctx, revs)
	d.checkControlServed(t0, time.Now())
}

// TestHAQuorumLoss: two of three etcd members killed. Writes fail at once
// with "etcd unavailable"; the replicas keep deciding, then fail closed
// (stale_state) once their budget passed; with the quorum back everything
// resumes and every committed revocation is still there and enforced.
func TestHAQuorumLoss(t *testing.T) {
	if !detectHA(t).serve {
		t.Skip(missingServe)
	}
	ctx := haContext(t)
	budget, grace := 3*time.Second, time.Second
	d := deployHA(ctx, t, haOptions{staleBudget: budget, grace: grace})
	before := []revocation{d.revoke(ctx, d.instances[0], d.subject(ctx, "before"))}
	requireSucceeded(t, before, "before the quorum loss")
	victim := d.subject(ctx, "no-quorum")

	t0 := time.Now()
	d.etcd.Kill(1)
	d.etcd.Kill(2)
	for _, in := range d.instances {
		out := d.ctl(ctx, in, "revoke", "--subject", victim, "--for", "1h")
		if out.code == 0 || !strings.Contains(out.stderr, "etcd unavailable") {
			t.Errorf("revoke via %s without quorum: want a failure naming \"etcd unavailable\", got %s", in.name, out)
		}
		t.Logf("write without quorum via %s refused in %v", in.name, out.took.Round(time.Millisecond))
	}
	// Deciding on the last state until the budget can have passed: last
	// contact is at most a heartbeat (budget/3) before the loss.
	d.load.waitDenied(ctx, t, haControl, t0, "stale_state")
	staleAt := time.Now()
	t.Logf("every replica failed closed (stale_state) %v after the quorum loss (grace %v, budget %v)",
		staleAt.Sub(t0).Round(time.Millisecond), grace, budget)
	d.checkControlServed(t0, t0.Add(budget*2/3-300*time.Millisecond))

	d.etcd.Restart(1)
	d.etcd.Restart(2)
	t1 := time.Now()
	d.load.waitServed(ctx, t, haControl, t1)
	t.Logf("every replica deciding again %v after the quorum came back", time.Since(t1).Round(time.Millisecond))
	after := []revocation{d.revoke(ctx, d.instances[1%len(d.instances)], d.subject(ctx, "quorum-back"))}
	requireSucceeded(t, after, "quorum back")
	d.checkRevoked(ctx, append(before, after...))
	list := d.mustCtl(ctx, d.instances[0], "get", "revocations")
	for _, r := range before {
		if !strings.Contains(list.stdout, r.subject) {
			t.Errorf("revocation of %s committed before the quorum loss is gone:\n%s", r.subject, list.stdout)
		}
	}
}

// TestHAInstanceCutOff: the last instance reaches etcd only through one
// member; that member dies (the cluster keeps its quorum). The cut-off
// instance refuses writes and, after --etcd-grace, closes its streams:
// its replica moves to a healthy instance and follows the revocations
// made there, without ever failing closed.
func TestHAInstanceCutOff(t *testing.T) {
	if !detectHA(t).serve {
		t.Skip(missingServe)
	}
	ctx := haContext(t)
	grace := time.Second
	d := deployHA(ctx, t, haOptions{grace: grace, endpoints: func(i int, m []string) []string {
		if i == 2 {
			return m[2:]
		}
		return m[:2]
	}})
	cut, moved := d.instances[2], d.replicas[2] // authz-2 lists cp-2 first
	d.waitPlacement(ctx, d.instances[0], moved, cut.name)
	t0 := time.Now()
	d.etcd.Kill(2)
	if out := d.ctl(ctx, cut, "revoke", "--subject", "spiffe://example.org/agent/cut", "--for", "1h"); out.code == 0 ||
		!strings.Contains(out.stderr, "etcd unavailable") {
		t.Errorf("revoke via the cut-off %s: want a failure naming \"etcd unavailable\", got %s", cut.name, out)
	}
	up, to := d.waitMoved(ctx, moved, d.instances[:2], grace+10*time.Second)
	if up.IsZero() {
		t.Fatalf("%s did not move off %s within %v", moved.name, cut.name, grace+10*time.Second)
	}
	t.Logf("%s on %s %v after the cut (grace %v)", moved.name, to, up.Sub(t0).Round(time.Millisecond), grace)
	// The instance notices within a probe or two (500 ms each), waits
	// out the grace, closes; the replica reconnects after its backoff.
	if up.Sub(t0) > grace+4*time.Second {
		t.Errorf("%s moved %v after the cut, want <= grace + 4s", moved.name, up.Sub(t0))
	}
	r := d.revoke(ctx, d.instances[0], d.subject(ctx, "after-cut"))
	requireSucceeded(t, []revocation{r}, "through a healthy instance")
	d.checkRevoked(ctx, []revocation{r})
	d.checkControlServed(t0, time.Now())
}

// TestHARollingRestart: every instance in turn stopped (SIGTERM) and
// started again on its addresses, while revocations go on through the
// others: no revoke --wait fails, no allow after one returned, no replica
// stops deciding.
func TestHARollingRestart(t *testing.T) {
	if !detectHA(t).serve {
		t.Skip(missingServe)
	}
	ctx := haContext(t)
	d := deployHA(ctx, t, haOptions{})
	var restarting atomic.Int64
	var k atomic.Int64
	rv := startRevoker(ctx, d, "rolling", func() *haInstance {
		skip := int(restarting.Load())
		for {
			i := int(k.Add(1)) % len(d.instances)
			if i != skip {
				return d.instances[i]
			}
		}
	})
	rv.waitCount(ctx, t, 1)
	t0 := time.Now()
	for i, in := range d.instances {
		restarting.Store(int64(i))
		rv.waitCount(ctx, t, 1) // no revocation in flight through in
		if err := in.p.Stop(); err != nil {
			t.Fatal(err)
		}
		d.restartInstance(ctx, in)
		t.Logf("%s restarted %v into the rolling restart", in.name, time.Since(t0).Round(time.Millisecond))
		rv.waitCount(ctx, t, 1)
	}
	restarting.Store(-1)
	rv.waitCount(ctx, t, 2)
	revs := rv.stop()
	requireSucceeded(t, revs, "rolling restart")
	d.checkRevoked(ctx, revs)
	d.checkControlServed(t0, time.Now())
	t.Logf("%d revocations with --wait during the rolling restart", len(revs))
}
