package xdsclient

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// fakeClock hands every After to the test, which fires it.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters chan waiter
}

type waiter struct {
	d  time.Duration
	ch chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Unix(1000, 0), waiters: make(chan waiter, 16)}
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) After(d time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	f.waiters <- waiter{d: d, ch: ch}
	return ch
}

func (f *fakeClock) advance(d time.Duration) time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
	return f.now
}

func (f *fakeClock) next(t *testing.T) waiter {
	t.Helper()
	select {
	case w := <-f.waiters:
		return w
	case <-time.After(15 * time.Second):
		t.Fatal("no timer started")
		return waiter{}
	}
}

// TestNoServerNeverSynced: with nothing listening the client retries with
// jittered exponential backoff bounded by BackoffMax and never syncs.
func TestNoServerNeverSynced(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var target atomic.Value
	target.Store(lis.Addr().String())
	_ = lis.Close() // nothing listens there now
	clock := newFakeClock()
	applied := atomic.Int32{}
	c, stop := runClient(t, Config{Conn: dialConn(t, &target), NodeID: "lonely", Clock: clock,
		BackoffMin: 100 * time.Millisecond, BackoffMax: 800 * time.Millisecond, Heartbeat: -1,
		Apply: func(State) error { applied.Add(1); return nil }})
	want := []time.Duration{100, 200, 400, 800, 800, 800}
	for i, max := range want {
		max *= time.Millisecond
		w := clock.next(t)
		if w.d < max/2 || w.d > max {
			t.Fatalf("retry %d waits %v, want within [%v, %v]", i, w.d, max/2, max)
		}
		w.ch <- clock.advance(w.d)
	}
	if c.Synced() || !c.LastContact().IsZero() {
		t.Fatalf("Synced %v LastContact %v with no server", c.Synced(), c.LastContact())
	}
	stop()
	if applied.Load() != 0 {
		t.Fatalf("Apply called %d times without a server", applied.Load())
	}
}

// TestHeartbeatRefreshesLastContact: an idle stream's heartbeat gets an
// answer, which moves LastContact, and changes nothing.
func TestHeartbeatRefreshesLastContact(t *testing.T) {
	cp := startCP(t)
	setAll(t, cp.srv, pols(goodPolicy("p1")), revs("r1"))
	var target atomic.Value
	target.Store(cp.addr)
	clock := newFakeClock()
	rec := newRecorder()
	c, stop := runClient(t, Config{Conn: dialConn(t, &target), NodeID: "hb", Clock: clock, Heartbeat: time.Minute, Apply: rec.apply})
	defer stop()
	rec.wait(t, "synced", func(s State) bool { return len(s.Versions) == 4 })
	w := clock.next(t)
	if w.d != time.Minute {
		t.Fatalf("first timer %v, want the heartbeat", w.d)
	}
	// Contact is recorded once the ACK of the last type is sent, after
	// Apply returned: wait for it rather than race it.
	deadline := time.Now().Add(10 * time.Second)
	for c.LastContact().IsZero() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	first := c.LastContact()
	if !first.Equal(time.Unix(1000, 0)) {
		t.Fatalf("LastContact %v, want fake now", first)
	}
	rec.mu.Lock()
	calls := rec.calls
	rec.mu.Unlock()
	now := clock.advance(time.Minute)
	w.ch <- now
	deadline = time.Now().Add(10 * time.Second)
	for !c.LastContact().Equal(now) {
		if time.Now().After(deadline) {
			t.Fatalf("LastContact %v after heartbeat, want %v", c.LastContact(), now)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if w2 := clock.next(t); w2.d != time.Minute {
		t.Fatalf("heartbeat not re-armed: %v", w2.d)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.calls != calls {
		t.Fatalf("a heartbeat with no change called Apply (%d -> %d)", calls, rec.calls)
	}
}

func TestNewValidatesConfig(t *testing.T) {
	ok := Config{Target: "127.0.0.1:1", NodeID: "n", Logger: discard(), Apply: func(State) error { return nil }}
	tests := []struct {
		name string
		mod  func(*Config)
	}{
		{"no node", func(c *Config) { c.NodeID = "" }},
		{"no apply", func(c *Config) { c.Apply = nil }},
		{"no logger", func(c *Config) { c.Logger = nil }},
		{"no target", func(c *Config) { c.Target = "" }},
		{"no credentials", func(c *Config) { c.DialOptions = nil }},
		{"backoff inverted", func(c *Config) { c.BackoffMin, c.BackoffMax = time.Second, time.Millisecond }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := ok
			tt.mod(&cfg)
			if _, err := New(cfg); err == nil {
				t.Fatal("New accepted a bad config")
			}
		})
	}
}

func anyOf(t testing.TB, m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestValidate(t *testing.T) {
	ts := timestamppb.New(farFuture)
	bad := &timestamppb.Timestamp{Seconds: -1 << 62}
	tests := []struct {
		name    string
		typeURL string
		res     map[string]proto.Message
		wantErr string
	}{
		{"policies ok", mandatev1.PolicyTypeURL, map[string]proto.Message{"p1": goodPolicy("p1"), "p2": goodPolicy("p2")}, ""},
		{"no policies", mandatev1.PolicyTypeURL, nil, ""},
		{"policy hash mismatch", mandatev1.PolicyTypeURL, map[string]proto.Message{"p1": &mandatev1.Policy{Name: "p1", Source: []byte(policyYAML("p1", "spiffe://e.org/a")), Version: "sha256:00"}}, "content hash"},
		{"policy empty", mandatev1.PolicyTypeURL, map[string]proto.Message{"p1": &mandatev1.Policy{Name: "p1"}}, "empty source"},
		{"policy not yaml", mandatev1.PolicyTypeURL, map[string]proto.Message{"p1": pol("p1", "{{{")}, `Policy "p1"`},
		{"duplicate policy names across resources", mandatev1.PolicyTypeURL, map[string]proto.Message{"a": pol("a", policyYAML("same", "spiffe://e.org/a")), "b": pol("b", policyYAML("same", "spiffe://e.org/b"))}, "compile policy set"},
		{"name mismatch", mandatev1.PolicyTypeURL, map[string]proto.Message{"p1": goodPolicy("p2")}, "names itself"},
		{"wrong type", mandatev1.PolicyTypeURL, map[string]proto.Message{"p1": &mandatev1.Approval{Name: "p1"}}, "has type"},
		{"revocation ok", mandatev1.RevocationTypeURL, map[string]proto.Message{"r": &mandatev1.Revocation{Name: "r", Kind: "subject", Value: "spiffe://e.org/a/*", Expires: ts}}, ""},
		{"revocation bad kind", mandatev1.RevocationTypeURL, map[string]proto.Message{"r": &mandatev1.Revocation{Name: "r", Kind: "user", Value: "x", Expires: ts}}, `Revocation "r"`},
		{"revocation no expiry", mandatev1.RevocationTypeURL, map[string]proto.Message{"r": &mandatev1.Revocation{Name: "r", Kind: "task", Value: "x"}}, "no expiry"},
		{"revocation bad timestamp", mandatev1.RevocationTypeURL, map[string]proto.Message{"r": &mandatev1.Revocation{Name: "r", Kind: "task", Value: "x", Expires: bad}}, "expires"},
		{"revocation subject not spiffe", mandatev1.RevocationTypeURL, map[string]proto.Message{"r": &mandatev1.Revocation{Name: "r", Kind: "subject", Value: "bob", Expires: ts}}, "SPIFFE"},
		{"approval ok", mandatev1.ApprovalTypeURL, map[string]proto.Message{"a": approval("a")}, ""},
		{"approval no expiry", mandatev1.ApprovalTypeURL, map[string]proto.Message{"a": func() proto.Message { a := approval("a"); a.Expires = nil; return a }()}, "no expiry"},
		{"approval no approver", mandatev1.ApprovalTypeURL, map[string]proto.Message{"a": func() proto.Message { a := approval("a"); a.ApprovedBy = ""; return a }()}, "approved_by"},
		{"approval bad subject", mandatev1.ApprovalTypeURL, map[string]proto.Message{"a": func() proto.Message { a := approval("a"); a.Subject = "x"; return a }()}, "SPIFFE"},
		{"approval no action", mandatev1.ApprovalTypeURL, map[string]proto.Message{"a": func() proto.Message { a := approval("a"); a.Method, a.Path = "", ""; return a }()}, "no method"},
		{"key ok", mandatev1.VerificationKeyTypeURL, map[string]proto.Message{"k": key("k")}, ""},
		{"key short", mandatev1.VerificationKeyTypeURL, map[string]proto.Message{"k": &mandatev1.VerificationKey{Name: "k", Algorithm: "EdDSA", PublicKey: make([]byte, 31)}}, "31 bytes"},
		{"key alg", mandatev1.VerificationKeyTypeURL, map[string]proto.Message{"k": &mandatev1.VerificationKey{Name: "k", Algorithm: "RS256", PublicKey: make([]byte, 32)}}, "RS256"},
		{"key window", mandatev1.VerificationKeyTypeURL, map[string]proto.Message{"k": &mandatev1.VerificationKey{Name: "k", Algorithm: "EdDSA", PublicKey: make([]byte, 32), NotBefore: ts, NotAfter: timestamppb.New(farFuture.Add(-time.Hour))}}, "not_before"},
		{"unknown type", "type.googleapis.com/x.Y", nil, "unsupported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			entries := map[string]entry{}
			for n, m := range tt.res {
				entries[n] = entry{version: "v", res: anyOf(t, m)}
				if r, ok := m.(*mandatev1.Revocation); ok { // records travel in shards
					delete(entries, n)
					entries[shardName(n)] = entry{version: "v", res: shardOf(t, shardName(n), r)}
				}
			}
			_, err := validate(tt.typeURL, entries)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

// FuzzHandle feeds arbitrary DeltaDiscoveryResponses to the client: it
// must never panic, must always answer with the response's nonce, and a
// NACK must leave the applied state untouched.
func FuzzHandle(f *testing.F) {
	good, _ := proto.Marshal(&discovery.DeltaDiscoveryResponse{TypeUrl: mandatev1.RevocationTypeURL, Nonce: "1", SystemVersionInfo: "1",
		Resources: []*discovery.Resource{{Name: shardName("r1"), Version: "a", Resource: shardOf(f, shardName("r1"),
			&mandatev1.Revocation{Name: "r1", Kind: "task", Value: "t", Expires: timestamppb.New(farFuture)})}}})
	badPol, _ := proto.Marshal(&discovery.DeltaDiscoveryResponse{TypeUrl: mandatev1.PolicyTypeURL, Nonce: "2", SystemVersionInfo: "2",
		Resources: []*discovery.Resource{{Name: "p", Resource: anyOf(f, pol("p", "{{"))}}})
	f.Add(good)
	f.Add(badPol)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var r discovery.DeltaDiscoveryResponse
		if err := proto.Unmarshal(data, &r); err != nil {
			return
		}
		var applied []State
		c, err := New(Config{Conn: noConn{}, NodeID: "fuzz", Logger: discard(), Apply: func(s State) error { applied = append(applied, s); return nil }})
		if err != nil {
			t.Fatal(err)
		}
		before := c.state()
		reply := c.handle(&r)
		if reply.GetResponseNonce() != r.GetNonce() || reply.GetTypeUrl() != r.GetTypeUrl() {
			t.Fatalf("reply %v does not answer %v", reply, r.GetNonce())
		}
		if reply.GetErrorDetail() != nil {
			after := c.state()
			if after.Policies != before.Policies || after.Revocations != before.Revocations || len(after.Versions) != 0 || len(applied) != 0 {
				t.Fatal("a NACKed response changed the applied state")
			}
		} else if len(applied) != 1 || applied[0].Policies == nil || applied[0].Revocations == nil {
			t.Fatalf("an ACKed response applied %d states", len(applied))
		}
	})
}

// noConn is a connection New accepts; FuzzHandle never opens a stream.
type noConn struct{}

func (noConn) Invoke(context.Context, string, any, any, ...grpc.CallOption) error {
	return errors.New("noConn")
}

func (noConn) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, errors.New("noConn")
}
