package report

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/mandate-dev/mandate/authz"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// fakeCP is a Replicas service on 127.0.0.1:0.
type fakeCP struct {
	mandatev1.UnimplementedReplicasServer
	mu      sync.Mutex
	reqs    []*mandatev1.ReplicaReportRequest
	fail    []codes.Code // codes to answer with, in order, before succeeding
	arrived chan struct{}
}

func (f *fakeCP) Report(_ context.Context, in *mandatev1.ReplicaReportRequest) (*mandatev1.ReplicaReportResponse, error) {
	f.mu.Lock()
	defer func() {
		f.mu.Unlock()
		select {
		case f.arrived <- struct{}{}:
		default:
		}
	}()
	if len(f.fail) > 0 {
		c := f.fail[0]
		f.fail = f.fail[1:]
		return nil, status.Error(c, "injected")
	}
	f.reqs = append(f.reqs, in)
	return &mandatev1.ReplicaReportResponse{Accepted: uint32(len(in.GetEvents()))}, nil
}

func (f *fakeCP) snapshot() ([]int, int, uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var sizes []int
	total := 0
	var dropped uint64
	for _, r := range f.reqs {
		sizes = append(sizes, len(r.GetEvents()))
		total += len(r.GetEvents())
		dropped += r.GetDropped()
	}
	return sizes, total, dropped
}

func startCP(t *testing.T, fail ...codes.Code) (*fakeCP, *grpc.ClientConn) {
	t.Helper()
	f := &fakeCP{fail: fail, arrived: make(chan struct{}, 100)}
	gs := grpc.NewServer()
	mandatev1.RegisterReplicasServer(gs, f)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return f, conn
}

func oi(i int) authz.OutOfIntent {
	return authz.OutOfIntent{Subject: "spiffe://example.org/agent/a", Task: "t1", Intent: "triage", Reason: "mandate_out_of_scope",
		MandateID: "AAAAAAAAAAAAAAAAAAAAAA", Time: time.Unix(int64(1_900_000_000+i), 0)}
}

func waitFor(t *testing.T, f *fakeCP, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for !cond() {
		select {
		case <-f.arrived:
		case <-deadline:
			t.Fatal("timed out")
		}
	}
}

// waitStats polls the reporter's counters until cond holds.
func waitStats(t *testing.T, r *Reporter, cond func(sent, dropped, failed uint64) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond(r.Stats()) {
		if time.Now().After(deadline) {
			s, d, f := r.Stats()
			t.Fatalf("timed out: sent=%d dropped=%d failed=%d", s, d, f)
		}
		time.Sleep(time.Millisecond)
	}
}

func run(t *testing.T, r *Reporter) (cancel func()) {
	ctx, c := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	return func() { c(); <-done }
}

func TestBatchesBySize(t *testing.T) {
	f, conn := startCP(t)
	r, err := New(Config{Conn: conn, BatchSize: 10, FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 25; i++ {
		r.OnOutOfIntent(oi(i))
	}
	r.OnStepUp(authz.StepUpRequest{ID: "ar-0123456789abcdef0123", Subject: "spiffe://example.org/agent/a", Method: "POST", Path: "/pay", Policy: "p", Rule: "r", Time: time.Unix(1_900_000_000, 0)})
	stop := run(t, r)
	waitFor(t, f, func() bool { s, _, _ := f.snapshot(); return len(s) == 2 })
	stop() // the final drain sends the remaining 6
	sizes, total, _ := f.snapshot()
	if total != 26 || sizes[0] != 10 || sizes[1] != 10 || sizes[2] != 6 {
		t.Fatalf("batches %v", sizes)
	}
	f.mu.Lock()
	first := f.reqs[0].GetEvents()[0].GetOutOfIntent()
	last := f.reqs[2].GetEvents()[5].GetStepUp()
	f.mu.Unlock()
	if first.GetSubject() != "spiffe://example.org/agent/a" || first.GetReason() != "mandate_out_of_scope" || first.GetTime().AsTime().Unix() != 1_900_000_000 {
		t.Fatalf("first event %v", first)
	}
	if last.GetId() != "ar-0123456789abcdef0123" || last.GetPath() != "/pay" || last.GetPolicy() != "p" {
		t.Fatalf("step-up event %v", last)
	}
	if sent, dropped, _ := r.Stats(); sent != 26 || dropped != 0 {
		t.Fatalf("stats sent=%d dropped=%d", sent, dropped)
	}
}

func TestFlushInterval(t *testing.T) {
	f, conn := startCP(t)
	r, err := New(Config{Conn: conn, BatchSize: 100, FlushInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, r)
	defer stop()
	for i := 0; i < 3; i++ {
		r.OnOutOfIntent(oi(i))
	}
	waitFor(t, f, func() bool { _, total, _ := f.snapshot(); return total == 3 })
}

func TestDropsWhenFullAndTellsTheCP(t *testing.T) {
	f, conn := startCP(t)
	r, err := New(Config{Conn: conn, QueueSize: 2, BatchSize: 100, FlushInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		// Callbacks never block, even with nobody draining the queue.
		for i := 0; i < 5; i++ {
			r.OnOutOfIntent(oi(i))
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("callback blocked")
	}
	if _, dropped, _ := r.Stats(); dropped != 3 {
		t.Fatalf("dropped %d, want 3", dropped)
	}
	stop := run(t, r)
	defer stop()
	waitFor(t, f, func() bool { _, total, d := f.snapshot(); return total == 2 && d == 3 })
}

func TestRetriesThenDelivers(t *testing.T) {
	f, conn := startCP(t, codes.Unavailable, codes.Unavailable)
	r, err := New(Config{Conn: conn, BatchSize: 1, MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, r)
	defer stop()
	r.OnOutOfIntent(oi(1))
	waitFor(t, f, func() bool { _, total, _ := f.snapshot(); return total == 1 })
	waitStats(t, r, func(sent, dropped, failed uint64) bool { return sent == 1 && dropped == 0 && failed == 2 })
}

func TestRefusedBatchIsDropped(t *testing.T) {
	f, conn := startCP(t, codes.PermissionDenied)
	r, err := New(Config{Conn: conn, BatchSize: 1, MinBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, r)
	defer stop()
	r.OnOutOfIntent(oi(1))
	r.OnOutOfIntent(oi(2))
	waitFor(t, f, func() bool { _, total, _ := f.snapshot(); return total == 1 })
	waitStats(t, r, func(sent, dropped, _ uint64) bool { return sent == 1 && dropped == 1 })
}

func TestConfig(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Fatal("no Conn accepted")
	}
	_, conn := startCP(t)
	if _, err := New(Config{Conn: conn, BatchSize: 5000}); err == nil {
		t.Fatal("batch over the cp limit accepted")
	}
}
