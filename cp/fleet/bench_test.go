package fleet

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/etcdtest"
	"github.com/mandate-dev/mandate/internal/testcert"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// BenchmarkFleetWait: two instances on a 3-member etcd on loopback, a
// real replica on each. Each iteration publishes a new Revocation version
// on both and waits, through the first instance's fleet view, until both
// replicas ACKed it: the replica on the other instance counts once its
// instance published the ACK and the first followed it. Reports the
// percentiles of that wait (p50-ms, p99-ms) and, as a reference, of the
// wait for the local replica alone (local-p50-ms).
func BenchmarkFleetWait(b *testing.B) {
	c := etcdtest.Start(b, 3)
	ca := testcert.NewCA(b, "example.org")
	prefix := freshPrefix()
	x := startInstance(b, c, ca, prefix, "cp-a")
	y := startInstance(b, c, ca, prefix, "cp-b")
	replica(b, ca, x, authz+"r1", "r1")
	replica(b, ca, y, authz+"r2", "r2")
	connected(b, x.pr, 2)
	local, _ := NewLocal("cp-a", x.xs)
	var fleetD, localD []time.Duration
	v := uint64(10)
	b.ResetTimer()
	for b.Loop() {
		v++
		setRevocations(b, x, v, "x")
		setRevocations(b, y, v, "x")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		start := time.Now()
		if n, err := WaitAcked(ctx, local, mandatev1.RevocationTypeURL, v); err != nil || n != 1 {
			b.Fatalf("local wait: %d %v", n, err)
		}
		localD = append(localD, time.Since(start))
		if n, err := WaitAcked(ctx, x.pr, mandatev1.RevocationTypeURL, v); err != nil || n != 2 {
			_, acks := y.xs.Snapshot()
			b.Fatalf("fleet wait: %d %v (cp-b's own ACK state: %+v)", n, err, acks)
		}
		fleetD = append(fleetD, time.Since(start))
		cancel()
	}
	b.StopTimer()
	pct := func(ds []time.Duration, p float64) float64 {
		s := slices.Clone(ds)
		slices.Sort(s)
		return float64(s[min(len(s)-1, int(p*float64(len(s))))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(fleetD, 0.5), "p50-ms")
	b.ReportMetric(pct(fleetD, 0.99), "p99-ms")
	b.ReportMetric(pct(localD, 0.5), "local-p50-ms")
}
