package drift_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/cp/drift"
	"github.com/mandate-dev/mandate/cp/fleet"
	"github.com/mandate-dev/mandate/cp/plane"
	"github.com/mandate-dev/mandate/cp/stepup"
	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/cp/store/etcdstore"
	"github.com/mandate-dev/mandate/internal/etcdtest"
	"github.com/mandate-dev/mandate/xds/mandatev1"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

var fleetPrefixes atomic.Int64

// cpInstance is the drift part of one mandate-cp on etcd: its plane, its
// Replicas service reporting into the fleet's queue, and its detector,
// which counts only while the instance leads.
type cpInstance struct {
	name string
	db   *store.DB
	pl   *plane.Plane
	rp   *drift.Replicas
	sg   *fleet.Singletons
	// stop ends the instance's singletons (it gives up leadership).
	stop func()
}

func startCP(t *testing.T, c *etcdtest.Cluster, member int, prefix, name string) *cpInstance {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	be, err := etcdstore.OpenBackend(ctx, etcdstore.Config{Endpoints: []string{c.Members[member].ClientURL}, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	db, err := store.New(be)
	if err != nil {
		t.Fatal(err)
	}
	xopts, err := plane.ServerOptions(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	xs, err := xdsserver.New(logger, xopts...)
	if err != nil {
		t.Fatal(err)
	}
	pl, err := plane.New(ctx, db, xs, logger)
	if err != nil {
		t.Fatal(err)
	}
	su, err := stepup.New(stepup.Config{Plane: pl, Logger: logger, Uses: db})
	if err != nil {
		t.Fatal(err)
	}
	rules, err := drift.FlagRules(5, time.Minute, drift.ActionRevoke, nil)
	if err != nil {
		t.Fatal(err)
	}
	det, err := drift.New(drift.Config{Plane: pl, Rules: rules, Actor: "spiffe://example.org/mandate/cp", Logger: logger, Counts: db})
	if err != nil {
		t.Fatal(err)
	}
	q, err := drift.NewQueue(db, name, logger)
	if err != nil {
		t.Fatal(err)
	}
	rp, err := drift.NewReplicas(drift.ReplicasConfig{Identify: func(context.Context) (string, error) { return replicaID, nil },
		Replicas: []string{replicaID}, Drift: q, StepUps: su, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	el, err := fleet.NewElection(be.Client(), prefix, name, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	sg, err := fleet.NewSingletons(el, logger)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sg.Run(ctx, func(ctx context.Context) { q.Drain(ctx, det, 20*time.Millisecond) })
	}()
	t.Cleanup(func() { cancel(); <-done; xs.Close(); _ = db.Close() })
	return &cpInstance{name: name, db: db, pl: pl, rp: rp, sg: sg, stop: func() { cancel(); <-done }}
}

func outOfIntent(subject string) *mandatev1.ReplicaReportRequest {
	return &mandatev1.ReplicaReportRequest{Events: []*mandatev1.ReplicaEvent{{Event: &mandatev1.ReplicaEvent_OutOfIntent{
		OutOfIntent: &mandatev1.OutOfIntentEvent{Subject: subject, Intent: "read", Reason: "no_matching_rule", Time: timestamppb.Now()}}}}}
}

// TestDriftCountsAcrossInstances: two instances on one etcd, threshold 5
// (the 6th denial within the window acts). Three denials of one subject
// reach each instance: each instance alone saw three, the fleet six, and
// the subject is revoked exactly once, by the leader. Before, every
// instance counted what reached it, and the subject was never revoked.
func TestDriftCountsAcrossInstances(t *testing.T) {
	c := etcdtest.Start(t, 3)
	prefix := fmt.Sprintf("/drift-fleet-%d/", fleetPrefixes.Add(1))
	a := startCP(t, c, 0, prefix, "cp-a")
	b := startCP(t, c, 1, prefix, "cp-b")
	ctx := context.Background()
	const subject = "spiffe://example.org/agent/split"
	for i := range 6 {
		in := a
		if i%2 == 1 {
			in = b
		}
		if _, err := in.rp.Report(ctx, outOfIntent(subject)); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		items, _, err := a.db.List(ctx, mandatev1.RevocationTypeURL)
		if err != nil {
			t.Fatal(err)
		}
		if len(items) == 1 {
			break
		}
		if len(items) > 1 || time.Now().After(deadline) {
			t.Fatalf("%d revocation records after 6 denials split over two instances, want 1", len(items))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// revocations waits until the fleet holds want revocation records, and
// fails on more.
func revocations(t *testing.T, in *cpInstance, want int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		items, _, err := in.db.List(context.Background(), mandatev1.RevocationTypeURL)
		if err != nil {
			t.Fatal(err)
		}
		if len(items) == want {
			return
		}
		if len(items) > want || time.Now().After(deadline) {
			t.Fatalf("%d revocation records, want %d", len(items), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDriftCountsSurviveLeaderChange: threshold 5 (the 6th denial within
// the window acts). Three denials of one subject are counted by the
// leader, which then stops; three more reach the next leader: the
// subject is revoked exactly once, and later denials within the window
// act no more. Before, the counts lived in the first leader's memory and
// the new one never reached the threshold.
func TestDriftCountsSurviveLeaderChange(t *testing.T) {
	c := etcdtest.Start(t, 3)
	prefix := fmt.Sprintf("/drift-leader-%d/", fleetPrefixes.Add(1))
	ctx := context.Background()
	a := startCP(t, c, 0, prefix, "cp-a")
	waitFor(t, "cp-a leads", a.sg.Leading)
	b := startCP(t, c, 1, prefix, "cp-b")
	const subject = "spiffe://example.org/agent/moved"
	report := func(in *cpInstance, n int) {
		t.Helper()
		for range n {
			if _, err := in.rp.Report(ctx, outOfIntent(subject)); err != nil {
				t.Fatal(err)
			}
		}
	}
	report(b, 3)
	// The leader's detector keeps its counts under the key of the rule
	// ("flags"), the kind and the subject.
	key := "flags\x00subject\x00" + subject
	waitFor(t, "three denials counted in the store", func() bool {
		got, err := a.db.DriftCounts(ctx, []string{key})
		var count struct {
			Times []int64 `json:"t"`
		}
		return err == nil && json.Unmarshal(got[key], &count) == nil && len(count.Times) == 3
	})
	a.stop()
	waitFor(t, "cp-b leads", b.sg.Leading)
	report(b, 3)
	revocations(t, b, 1)
	report(b, 6)
	// Denials of another subject queued after those six, one at a time:
	// once the leader has counted the first, it has taken the six (the
	// queue is read oldest first); once it has counted the second, queued
	// after that, it has also finished whatever the six made it do.
	const sentinel = "spiffe://example.org/agent/sentinel"
	skey := "flags\x00subject\x00" + sentinel
	for n := 1; n <= 2; n++ {
		if _, err := b.rp.Report(ctx, outOfIntent(sentinel)); err != nil {
			t.Fatal(err)
		}
		waitFor(t, fmt.Sprintf("denial %d of the later subject counted", n), func() bool {
			got, err := b.db.DriftCounts(ctx, []string{skey})
			var count struct {
				Times []int64 `json:"t"`
			}
			return err == nil && json.Unmarshal(got[skey], &count) == nil && len(count.Times) == n
		})
	}
	revocations(t, b, 1)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestOneUseApprovalClaimedOnceAcrossInstances: replicas on two
// instances claim the one use of an approval at the same moment, through
// each instance's Replicas.ClaimApprovalUse: exactly one claim wins
// fleet-wide, every other one is refused as exhausted (the replica then
// denies).
func TestOneUseApprovalClaimedOnceAcrossInstances(t *testing.T) {
	c := etcdtest.Start(t, 3)
	prefix := fmt.Sprintf("/claim-fleet-%d/", fleetPrefixes.Add(1))
	ctx := context.Background()
	a := startCP(t, c, 0, prefix, "cp-a")
	const rounds = 5
	for i := range rounds {
		ap := &mandatev1.Approval{Name: fmt.Sprintf("ar-%020x", i), Subject: "spiffe://example.org/agent/p1", Method: "POST",
			Path: "/refunds", ApprovedBy: "op", Uses: 1, Expires: timestamppb.New(time.Now().Add(time.Hour))}
		if _, err := a.pl.PutApproval(ctx, ap, "op"); err != nil {
			t.Fatal(err)
		}
	}
	b := startCP(t, c, 1, prefix, "cp-b") // loads the approvals from etcd
	for i := range rounds {
		name := fmt.Sprintf("ar-%020x", i)
		var won, exhausted atomic.Int32
		var wg sync.WaitGroup
		startLine := make(chan struct{})
		for j := range 16 {
			in := []*cpInstance{a, b}[j%2]
			wg.Go(func() {
				<-startLine
				_, err := in.rp.ClaimApprovalUse(ctx, &mandatev1.ClaimApprovalUseRequest{Name: name})
				switch status.Code(err) {
				case codes.OK:
					won.Add(1)
				case codes.ResourceExhausted:
					exhausted.Add(1)
				default:
					t.Errorf("claim through %s: %v", in.name, err)
				}
			})
		}
		close(startLine)
		wg.Wait()
		if won.Load() != 1 || exhausted.Load() != 15 {
			t.Fatalf("%s: %d claims won, %d refused; want 1 and 15", name, won.Load(), exhausted.Load())
		}
	}
}
