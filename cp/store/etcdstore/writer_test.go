package etcdstore

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"

	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/internal/etcdtest"
	"github.com/mandate-dev/mandate/internal/testkit"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// leads reports whether the member behind ep says it is the leader.
func leads(t *testing.T, b *Backend, ep string) bool {
	t.Helper()
	c, err := b.memberClient(ep)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	st, err := pb.NewMaintenanceClient(c.ActiveConnection()).Status(ctx, &pb.StatusRequest{})
	return err == nil && st.GetHeader().GetMemberId() == st.GetLeader()
}

// leaderEndpoint returns the endpoint transactions go through first ("":
// the balanced client).
func leaderEndpoint(b *Backend) string {
	if l := b.leader.Load(); l != nil {
		return l.endpoint
	}
	return ""
}

func putRevocation(ctx context.Context, d *store.DB, name string) error {
	_, err := d.Put(ctx, mandatev1.RevocationTypeURL, []store.Item{{Name: name, Value: []byte(name)}})
	return err
}

// TestWritesGoThroughTheLeader: with three endpoints, transactions go
// through the member that leads; when it is killed, writes go on (through
// the balanced client while the leader is unknown or its connection
// down), then through the new leader.
func TestWritesGoThroughTheLeader(t *testing.T) {
	ctx := context.Background()
	c := etcdtest.Start(t, 3)
	be, d := openDB(t, Config{Endpoints: c.Endpoints(), ProbeEvery: 50 * time.Millisecond})
	var first string
	testkit.WaitUntil(t, "writes through the leader", func() bool {
		first = leaderEndpoint(be)
		return first != "" && leads(t, be, first)
	})
	handledBy(t, c.Endpoints(), first, func() {
		if err := putRevocation(ctx, d, "through-leader"); err != nil {
			t.Fatal(err)
		}
	})
	dead := -1
	for i, ep := range c.Endpoints() {
		if ep == first {
			dead = i
		}
	}
	c.Kill(dead)
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := etcdtest.WaitHealthy(wctx, func(ctx context.Context) error { return putRevocation(ctx, d, "leader-killed") }); err != nil {
		t.Fatalf("write after the leader was killed: %v", err)
	}
	var next string
	testkit.WaitUntil(t, "writes through the new leader", func() bool {
		next = leaderEndpoint(be)
		return next != "" && next != first && leads(t, be, next)
	})
	var alive []string
	for i, ep := range c.Endpoints() {
		if i != dead {
			alive = append(alive, ep)
		}
	}
	handledBy(t, alive, next, func() {
		if err := putRevocation(ctx, d, "through-new-leader"); err != nil {
			t.Fatal(err)
		}
	})
}

// handledBy runs write and checks, by each member's count of the Txn
// calls it answered (grpc_server_handled_total on its /metrics), that
// the member at leader answered it and no other member did (a follower
// forwards a Txn to the leader through raft, not gRPC, so it would count
// it and the leader not).
func handledBy(t *testing.T, endpoints []string, leader string, write func()) {
	t.Helper()
	before := map[string]float64{}
	for _, ep := range endpoints {
		before[ep] = txnsHandled(t, ep)
	}
	write()
	for _, ep := range endpoints {
		got := txnsHandled(t, ep) - before[ep]
		if ep == leader && got < 1 || ep != leader && got != 0 {
			t.Fatalf("member %s answered %v transactions of the write (leader %s)", ep, got, leader)
		}
	}
}

// txnsHandled is how many Txn calls the member at ep has answered.
func txnsHandled(t *testing.T, ep string) float64 {
	t.Helper()
	resp, err := http.Get(ep + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, "grpc_server_handled_total{") && strings.Contains(l, `grpc_method="Txn"`) {
			f := strings.Fields(l)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err != nil {
				t.Fatalf("%s: %q: %v", ep, l, err)
			}
			n += v
		}
	}
	return n
}

// fakeLeader is a gRPC server with etcd's KV service whose Txn is
// received and never answered.
type fakeLeader struct {
	pb.UnimplementedKVServer
	txns atomic.Int64
}

func (f *fakeLeader) Txn(ctx context.Context, _ *pb.TxnRequest) (*pb.TxnResponse, error) {
	f.txns.Add(1)
	<-ctx.Done()
	return nil, ctx.Err()
}

// serveFakeLeader serves a fakeLeader on loopback and makes the backend
// take it for the leader.
func serveFakeLeader(t *testing.T, be *Backend, opts ...grpc.ServerOption) *fakeLeader {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(opts...)
	f := &fakeLeader{}
	pb.RegisterKVServer(srv, f)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	pinLeader(t, be, ln.Addr().String())
	return f
}

// pinLeader makes the backend take addr for the leader's (the backend
// follows the real leader only every hour, so it stays).
func pinLeader(t *testing.T, be *Backend, addr string) {
	t.Helper()
	testkit.WaitUntil(t, "the real leader found", func() bool { return be.leader.Load() != nil })
	l, err := be.leaderKV("http://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	be.leader.Store(l)
}

// TestWriteNeverSentToTheLeaderGoesElsewhere: a leader connection that
// never becomes ready (the member died, or hangs) costs a write nothing:
// the call through it is never sent, and the write goes through the
// balanced client and commits. With etcd's default wait for a ready
// connection it would wait out its timeout and fail.
func TestWriteNeverSentToTheLeaderGoesElsewhere(t *testing.T) {
	ctx := context.Background()
	c := etcdtest.Start(t, 3)
	be, d := openDB(t, Config{Endpoints: c.Endpoints(), ProbeEvery: time.Hour, OpTimeout: time.Minute})
	// A listener that accepts connections and never speaks: the
	// connection to it never becomes ready.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				_ = c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	pinLeader(t, be, ln.Addr().String())
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, name := range []string{"first", "second"} {
		began := time.Now()
		if err := putRevocation(wctx, d, name); err != nil {
			t.Fatalf("write %s with the leader's connection never ready: %v", name, err)
		}
		// Far below the minute a call waiting for the connection would take.
		if took := time.Since(began); took > 10*time.Second {
			t.Fatalf("write %s took %v with the leader's connection never ready", name, took)
		}
	}
}

// TestWriteSentToTheLeaderIsNotSentAgain: a transaction handed to the
// leader's connection and not answered may be applied: the write fails
// with store.ErrOutcomeUnknown and is not sent to another member.
func TestWriteSentToTheLeaderIsNotSentAgain(t *testing.T) {
	ctx := context.Background()
	c := etcdtest.Start(t, 3)
	be, d := openDB(t, Config{Endpoints: c.Endpoints(), ProbeEvery: time.Hour, OpTimeout: 300 * time.Millisecond})
	fake := serveFakeLeader(t, be)
	// Wait for the connection to be ready, so the call is sent.
	conn := be.leader.Load().conn
	conn.Connect()
	testkit.WaitUntil(t, "the leader's connection ready", func() bool { return conn.GetState() == connectivity.Ready })

	err := putRevocation(ctx, d, "sent-once")
	if !errors.Is(err, store.ErrOutcomeUnknown) {
		t.Fatalf("write sent and not answered: got %v, want %v", err, store.ErrOutcomeUnknown)
	}
	if n := fake.txns.Load(); n != 1 {
		t.Fatalf("the leader received %d transactions, want 1", n)
	}
	noRevocations(t, d, "the write was sent again through another member")
}

// TestWriteOutOfTimeBeforeTheLeaderIsNotSentElsewhere: a transaction whose
// timeout passes before its request could go out to the leader (here the
// leader's one stream is taken) ends there, as any write out of time: it is
// not sent again through the balanced client.
func TestWriteOutOfTimeBeforeTheLeaderIsNotSentElsewhere(t *testing.T) {
	ctx := context.Background()
	c := etcdtest.Start(t, 3)
	be, d := openDB(t, Config{Endpoints: c.Endpoints(), ProbeEvery: time.Hour, OpTimeout: 300 * time.Millisecond})
	fake := serveFakeLeader(t, be, grpc.MaxConcurrentStreams(1))
	l := be.leader.Load()
	hold, release := context.WithCancel(ctx)
	defer release()
	go func() { _, _ = pb.NewKVClient(l.conn).Txn(hold, &pb.TxnRequest{}) }()
	testkit.WaitUntil(t, "the leader's one stream taken", func() bool { return fake.txns.Load() == 1 })

	if err := putRevocation(ctx, d, "out-of-time"); err == nil {
		t.Fatal("a write out of time before reaching the leader was committed elsewhere")
	}
	if n := fake.txns.Load(); n != 1 {
		t.Fatalf("the leader received %d transactions, want only the one holding its stream", n)
	}
	noRevocations(t, d, "the write was sent through another member")
}

// noRevocations fails the test when etcd holds a revocation: why says
// how it would have got there.
func noRevocations(t *testing.T, d *store.DB, why string) {
	t.Helper()
	items, _, err := d.List(context.Background(), mandatev1.RevocationTypeURL)
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 0 {
		t.Fatalf("%s: %v", why, items)
	}
}
