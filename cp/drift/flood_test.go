package drift_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/cp/drift"
	"github.com/mandate-dev/mandate/cp/plane"
	"github.com/mandate-dev/mandate/cp/stepup"
	"github.com/mandate-dev/mandate/cp/store/boltstore"
	xdsclient "github.com/mandate-dev/mandate/xds/client"
	"github.com/mandate-dev/mandate/xds/mandatev1"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

const replicaID = "spiffe://example.org/mandate/authz"

// TestHostileFloodIsBounded: a replica (compromised, or relaying a flood)
// reports 100,000 hostile denials, from 10,000 identities that each drift
// past the threshold, as fast as it can. The control plane writes a
// bounded number of records (the per-replica report rate and the global
// drift-action limit), its store stays small, and a fresh replica still
// syncs. Before, every identity was revoked: one record, one audit entry
// and one push each.
func TestHostileFloodIsBounded(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := boltstore.Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	xopts, err := plane.ServerOptions(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	xs, err := xdsserver.New(logger, xopts...)
	if err != nil {
		t.Fatal(err)
	}
	defer xs.Close()
	pl, err := plane.New(ctx, st, xs, logger)
	if err != nil {
		t.Fatal(err)
	}
	su, err := stepup.New(stepup.Config{Plane: pl, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	rules, err := drift.FlagRules(5, time.Minute, drift.ActionRevoke, nil)
	if err != nil {
		t.Fatal(err)
	}
	det, err := drift.New(drift.Config{Plane: pl, Rules: rules, Actor: "spiffe://example.org/mandate/cp", Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	rp, err := drift.NewReplicas(drift.ReplicasConfig{Identify: func(context.Context) (string, error) { return replicaID, nil },
		Replicas: []string{replicaID}, Drift: det, StepUps: su, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}

	const total, perSubject = 100_000, 10
	sent, refused := 0, 0
	batch := make([]*mandatev1.ReplicaEvent, 0, drift.MaxBatch)
	now := timestamppb.Now()
	for i := range total {
		batch = append(batch, &mandatev1.ReplicaEvent{Event: &mandatev1.ReplicaEvent_OutOfIntent{OutOfIntent: &mandatev1.OutOfIntentEvent{
			Subject: fmt.Sprintf("spiffe://example.org/agent/hostile-%d", i/perSubject), Task: "T-1", Intent: "read",
			Reason: "no_matching_rule", Time: now}}})
		if len(batch) == drift.MaxBatch {
			if _, err := rp.Report(ctx, &mandatev1.ReplicaReportRequest{Events: batch}); err != nil {
				refused += len(batch)
			}
			sent += len(batch)
			batch = batch[:0]
		}
	}
	revs, v := pl.Revocations(true)
	audit, err := pl.AuditLog(ctx, time.Time{}, 1_000_000, false)
	if err != nil {
		t.Fatal(err)
	}
	var size int64 // the database file and its write-ahead log
	for _, name := range []string{boltstore.FileName, boltstore.LogFileName} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		size += fi.Size()
	}
	t.Logf("%d hostile events reported (%d refused by the per-replica rate): %d revocation records, %d audit entries written, store %d KiB, revocation version %s",
		sent, refused, len(revs), len(audit), size>>10, v)
	if len(revs) > drift.DefaultMaxActions {
		t.Fatalf("%d revocation records written by a flood, want at most %d", len(revs), drift.DefaultMaxActions)
	}
	for _, r := range revs {
		if r.GetKind() == "task" {
			t.Fatalf("a header-declared task was revoked: %v", r)
		}
	}

	// A fresh replica still syncs.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	xs.Register(g)
	go func() { _ = g.Serve(lis) }()
	defer g.Stop()
	synced := make(chan struct{})
	c, err := xdsclient.New(xdsclient.Config{Target: lis.Addr().String(),
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		NodeID:      "fresh", Logger: logger, Apply: func(s xdsclient.State) error {
			if s.Revocations.Len() == len(revs) && len(s.Versions) == len(mandatev1.TypeURLs()) {
				select {
				case <-synced:
				default:
					close(synced)
				}
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(cctx) }()
	defer func() { cancel(); <-done }()
	select {
	case <-synced:
	case <-time.After(30 * time.Second):
		t.Fatal("a fresh replica did not sync after the flood")
	}
}
