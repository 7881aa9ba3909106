package etcdstore

import (
	"context"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/stats"
)

// A transaction sent to a follower is forwarded to the raft leader, and
// the follower answers only once it has learned that the leader committed
// it: two more messages between members on the path of every write than
// through the leader itself. So, with several endpoints, the backend finds
// the leader among its members (their status, every probe interval) and
// sends its transactions through that member's own connection.
//
// etcd's client waits for a connection to be ready before it sends a call,
// which suits a balanced client (another member serves) but not this one:
// right after the leader died, a write would wait out its whole timeout
// on the dead member's connection. So a call through the leader's
// connection never waits for it: it fails at once when the connection is
// not ready (grpc.WaitForReady(false)), and is cancelled when the
// connection stops being ready while the call is on it. A call that failed
// before its request was handed to the connection (seen by a gRPC stats
// handler on the member clients) was never sent: it goes through the
// balanced client instead, as if the leader were unknown. A call that was
// handed over and not answered may still be applied: its outcome is
// unknown, as through any member. Any member accepts any transaction: the
// choice changes the latency, never the outcome.

// leaderKV is the leading member's connection as a KV that never waits for
// the connection to be ready.
type leaderKV struct {
	endpoint string
	conn     *grpc.ClientConn
	kv       clientv3.KV
}

// failFast is a KV client whose calls fail at once on a connection that is
// not ready, instead of waiting for it (clientv3's default).
type failFast struct{ pb.KVClient }

func (f failFast) Txn(ctx context.Context, in *pb.TxnRequest, opts ...grpc.CallOption) (*pb.TxnResponse, error) {
	return f.KVClient.Txn(ctx, in, append(opts, grpc.WaitForReady(false))...)
}

// sentKey marks the context of a call through the leader with a flag the
// stats handler sets once the request is handed to the connection.
type sentKey struct{}

// sentTracker is the gRPC stats handler of the member clients.
type sentTracker struct{}

func (sentTracker) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (sentTracker) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (sentTracker) HandleConn(context.Context, stats.ConnStats) {}
func (sentTracker) HandleRPC(ctx context.Context, s stats.RPCStats) {
	if _, ok := s.(*stats.OutPayload); !ok {
		return
	}
	if sent, ok := ctx.Value(sentKey{}).(*atomic.Bool); ok {
		sent.Store(true)
	}
}

// commitTxn sends one transaction through the leader when it is known,
// and through the balanced client when it is not or when the call through
// the leader was never sent (its connection not ready). Both calls share
// one opCtx: the write's bounds, whichever way it goes.
func (b *Backend) commitTxn(ctx context.Context, cmps []clientv3.Cmp, ops []clientv3.Op) (*clientv3.TxnResponse, error) {
	octx, done := b.opCtx(ctx)
	defer done()
	if l := b.leader.Load(); l != nil {
		var sent atomic.Bool
		cctx, cancel := context.WithCancel(context.WithValue(octx, sentKey{}, &sent))
		go cancelUnlessReady(cctx, l.conn, cancel)
		resp, err := l.kv.Txn(cctx).If(cmps...).Then(ops...).Commit()
		cancel()
		// The write's own bounds (the caller's context, the timeout, the
		// probe finding etcd out of reach) end it, sent or not.
		if err == nil || sent.Load() || octx.Err() != nil {
			return resp, err
		}
		// Never sent: the leader's connection failed first.
	}
	return b.c.Txn(octx).If(cmps...).Then(ops...).Commit()
}

// cancelUnlessReady cancels a call on conn as soon as conn is not ready
// (at once when it is not), until ctx ends.
func cancelUnlessReady(ctx context.Context, conn *grpc.ClientConn, cancel context.CancelFunc) {
	for s := conn.GetState(); s == connectivity.Ready; s = conn.GetState() {
		if !conn.WaitForStateChange(ctx, s) {
			return
		}
	}
	cancel()
}

// leaderKV returns the transactions' way through the member at endpoint.
func (b *Backend) leaderKV(endpoint string) (*leaderKV, error) {
	c, err := b.memberClient(endpoint)
	if err != nil {
		return nil, err
	}
	conn := c.ActiveConnection()
	return &leaderKV{endpoint: endpoint, conn: conn, kv: clientv3.NewKVFromKVClient(failFast{pb.NewKVClient(conn)}, c)}, nil
}

// followLeader keeps b.leader on the leading member's connection until
// ctx ends, asking the members for their status every interval.
func (b *Backend) followLeader(ctx context.Context, every, timeout time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	ids := map[uint64]string{} // member id -> endpoint, as the members answer
	for {
		if ep, ok := b.findLeader(ctx, ids, timeout); !ok {
			b.leader.Store(nil)
		} else if l := b.leader.Load(); l == nil || l.endpoint != ep {
			l, err := b.leaderKV(ep)
			if err != nil {
				l = nil // not the old member's way: it no longer leads
			}
			b.leader.Store(l)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// findLeader returns the endpoint of the member that leads, by the
// status of every member (each answers its own id, the leader's and the
// raft term): the leader named in the latest term, so that a member cut
// off from the others, still naming the leader of an earlier term, is
// not believed. Asking the leader too keeps its connection in use.
func (b *Backend) findLeader(ctx context.Context, ids map[uint64]string, timeout time.Duration) (string, bool) {
	var leader, term uint64
	for _, ep := range b.members {
		c, err := b.memberClient(ep)
		if err != nil {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, timeout)
		st, err := pb.NewMaintenanceClient(c.ActiveConnection()).Status(sctx, &pb.StatusRequest{}, grpc.WaitForReady(false))
		cancel()
		if err != nil || st.GetHeader() == nil {
			continue
		}
		ids[st.GetHeader().GetMemberId()] = ep
		if st.GetLeader() != 0 && st.GetRaftTerm() >= term {
			leader, term = st.GetLeader(), st.GetRaftTerm()
		}
	}
	ep, ok := ids[leader]
	return ep, ok && leader != 0
}
