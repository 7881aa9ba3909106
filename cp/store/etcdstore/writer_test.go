package etcdstore

import (
	"context"
	"errors"
	"net"
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

// openDB opens a backend on c's members and a DB over it.
func openDB(t *testing.T, c *etcdtest.Cluster, cfg Config) (*Backend, *store.DB) {
	t.Helper()
	cfg.Endpoints, cfg.Prefix = c.Endpoints(), freshPrefix()
	be, err := OpenBackend(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	d, err := store.New(be)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return be, d
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
	be, d := openDB(t, c, Config{ProbeEvery: 50 * time.Millisecond})
	var first string
	testkit.WaitUntil(t, "writes through the leader", func() bool {
		first = leaderEndpoint(be)
		return first != "" && leads(t, be, first)
	})
	if err := putRevocation(ctx, d, "through-leader"); err != nil {
		t.Fatal(err)
	}
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
	testkit.WaitUntil(t, "writes through the new leader", func() bool {
		ep := leaderEndpoint(be)
		return ep != "" && ep != first && leads(t, be, ep)
	})
	if err := putRevocation(ctx, d, "through-new-leader"); err != nil {
		t.Fatal(err)
	}
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
	be, d := openDB(t, c, Config{ProbeEvery: time.Hour, OpTimeout: time.Minute})
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
		if err := putRevocation(wctx, d, name); err != nil {
			t.Fatalf("write %s with the leader's connection never ready: %v", name, err)
		}
	}
}

// TestWriteSentToTheLeaderIsNotSentAgain: a transaction handed to the
// leader's connection and not answered may be applied: the write fails
// with store.ErrOutcomeUnknown and is not sent to another member.
func TestWriteSentToTheLeaderIsNotSentAgain(t *testing.T) {
	ctx := context.Background()
	c := etcdtest.Start(t, 3)
	be, d := openDB(t, c, Config{ProbeEvery: time.Hour, OpTimeout: 300 * time.Millisecond})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	fake := &fakeLeader{}
	pb.RegisterKVServer(srv, fake)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	pinLeader(t, be, ln.Addr().String())
	// Wait for the connection to be ready, so the call is sent.
	conn := be.leader.Load().conn
	conn.Connect()
	testkit.WaitUntil(t, "the leader's connection ready", func() bool { return conn.GetState() == connectivity.Ready })

	err = putRevocation(ctx, d, "sent-once")
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
	be, d := openDB(t, c, Config{ProbeEvery: time.Hour, OpTimeout: 300 * time.Millisecond})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.MaxConcurrentStreams(1))
	fake := &fakeLeader{}
	pb.RegisterKVServer(srv, fake)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	pinLeader(t, be, ln.Addr().String())
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
