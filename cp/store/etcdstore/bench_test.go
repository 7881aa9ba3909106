package etcdstore

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/internal/etcdtest"
	"github.com/mandate-dev/mandate/internal/testkit"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// BenchmarkRevokeCommit commits what a Revoke commits (one revocation
// record and its audit entry, one transaction) on three members on
// loopback, alternating the two ways a transaction can go: through the
// member that leads, and through the balanced client (any member, a
// follower forwarding it to the leader). Alternating puts both under the
// same load; it reports the p50 and p99 of each.
func BenchmarkRevokeCommit(b *testing.B) {
	ctx := context.Background()
	c := etcdtest.Start(b, 3)
	be, d := openDB(b, Config{Endpoints: c.Endpoints(), ProbeEvery: time.Hour})
	testkit.WaitUntil(b, "the leader found", func() bool { return be.leader.Load() != nil })
	leader := be.leader.Load()
	revoke := func(i int) time.Duration {
		name := fmt.Sprintf("r-%d", i)
		t0 := time.Now()
		if _, err := d.Put(ctx, mandatev1.RevocationTypeURL, []store.Item{{Name: name, Value: []byte(name)}},
			store.AuditEntry{Actor: "bench", Action: "revoke", Object: "revocation/" + name}); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0)
	}
	revoke(-1) // the audit trail's counter known
	var viaLeader, balanced []time.Duration
	b.ResetTimer()
	for i := range b.N {
		be.leader.Store(leader)
		viaLeader = append(viaLeader, revoke(2*i))
		be.leader.Store(nil)
		balanced = append(balanced, revoke(2*i+1))
	}
	b.StopTimer()
	pct := func(d []time.Duration, p float64) float64 {
		slices.Sort(d)
		return float64(d[min(len(d)-1, int(p*float64(len(d))))]) / float64(time.Millisecond)
	}
	b.ReportMetric(pct(viaLeader, 0.5), "leader-p50-ms")
	b.ReportMetric(pct(viaLeader, 0.99), "leader-p99-ms")
	b.ReportMetric(pct(balanced, 0.5), "balanced-p50-ms")
	b.ReportMetric(pct(balanced, 0.99), "balanced-p99-ms")
	if os.Getenv("BENCH_TRACE") != "" {
		traceMembers(b, c)
	}
}

// traceMembers logs where the members' time went: the mean of their WAL
// fsyncs, backend commits and raft proposals' apply, from their metrics.
func traceMembers(b *testing.B, c *etcdtest.Cluster) {
	for _, ep := range c.Endpoints() {
		resp, err := http.Get(ep + "/metrics")
		if err != nil {
			b.Log(err)
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		sums := map[string]float64{}
		for _, l := range strings.Split(string(body), "\n") {
			for _, m := range []string{"etcd_disk_wal_fsync_duration_seconds", "etcd_disk_backend_commit_duration_seconds",
				"etcd_server_apply_duration_seconds", "etcd_network_peer_round_trip_time_seconds"} {
				for _, suf := range []string{"_sum", "_count"} {
					if strings.HasPrefix(l, m+suf) {
						f := strings.Fields(l)
						v, _ := strconv.ParseFloat(f[len(f)-1], 64)
						sums[m+suf] += v
					}
				}
			}
		}
		for _, m := range []string{"etcd_disk_wal_fsync_duration_seconds", "etcd_disk_backend_commit_duration_seconds",
			"etcd_server_apply_duration_seconds", "etcd_network_peer_round_trip_time_seconds"} {
			if n := sums[m+"_count"]; n > 0 {
				b.Logf("%s %s: %d, mean %.3f ms", ep, m, int(n), 1000*sums[m+"_sum"]/n)
			}
		}
	}
}
