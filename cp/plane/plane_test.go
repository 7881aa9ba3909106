package plane

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/authz/revocation"
	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/cp/store/boltstore"
	xdsclient "github.com/mandate-dev/mandate/xds/client"
	"github.com/mandate-dev/mandate/xds/mandatev1"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

const policyA = `apiVersion: mandate.dev/v1
kind: Policy
metadata:
  name: reader
spec:
  rules:
    - name: read
      effect: allow
      subjects: ["spiffe://example.org/agent/*"]
      actions:
        - methods: [GET]
          paths: ["/data/*"]
`

const policyB = `apiVersion: mandate.dev/v1
kind: Policy
metadata:
  name: writer
spec:
  rules:
    - name: write
      effect: allow
      subjects: ["spiffe://example.org/agent/w"]
      actions:
        - methods: [POST]
          paths: ["/data/*"]
`

func pol(name, src string) *mandatev1.Policy {
	return &mandatev1.Policy{Name: name, Source: []byte(src), SourceFile: name + ".yaml"}
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

type env struct {
	dir   string
	st    *store.DB
	xds   *xdsserver.Server
	p     *Plane
	addr  string
	reg   *prometheus.Registry
	close func()
}

// open builds store + xDS server (served on 127.0.0.1:0) + plane over dir.
func open(t testing.TB, dir string, opts ...Option) *env {
	t.Helper()
	ctx := context.Background()
	st, err := boltstore.Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	xopts, err := ServerOptions(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	xs, err := xdsserver.New(discard(), xopts...)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	p, err := New(ctx, st, xs, discard(), append([]Option{WithRegisterer(reg)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	xs.Register(g)
	go func() { _ = g.Serve(lis) }()
	var once sync.Once
	e := &env{dir: dir, st: st, xds: xs, p: p, addr: lis.Addr().String(), reg: reg}
	e.close = func() {
		once.Do(func() {
			xs.Close()
			g.Stop()
			_ = st.Close()
		})
	}
	t.Cleanup(e.close)
	return e
}

type replica struct {
	applied atomic.Value // xdsclient.State
	fail    atomic.Bool
	cancel  context.CancelFunc
	done    chan struct{}
}

func startReplica(t *testing.T, addr, node string) *replica {
	t.Helper()
	r := &replica{done: make(chan struct{})}
	c, err := xdsclient.New(xdsclient.Config{
		Target:      addr,
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		NodeID:      node,
		Logger:      discard(),
		BackoffMin:  10 * time.Millisecond,
		BackoffMax:  50 * time.Millisecond,
		Apply: func(s xdsclient.State) error {
			if r.fail.Load() {
				return errors.New("replica refuses this update")
			}
			r.applied.Store(s)
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { defer close(r.done); _ = c.Run(ctx); _ = c.Close() }()
	t.Cleanup(func() { cancel(); <-r.done })
	return r
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func future() time.Time { return time.Now().Add(time.Hour) }

func TestInvalidPolicySetNeverStoredOrPublished(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		in   []*mandatev1.Policy
		want string // substring of the error
	}{
		{"yaml syntax", []*mandatev1.Policy{pol("bad", "apiVersion: [")}, "bad.yaml"},
		{"unknown field", []*mandatev1.Policy{pol("bad", strings.Replace(policyB, "effect: allow", "effect: allow\n      colour: red", 1))}, "colour"},
		{"bad effect", []*mandatev1.Policy{pol("bad", strings.Replace(policyB, "effect: allow", "effect: maybe", 1))}, "effect"},
		{"bad CEL", []*mandatev1.Policy{pol("bad", strings.Replace(policyB, "effect: allow", "effect: allow\n      when: 'request.path ++'", 1))}, "write"},
		{"duplicate policy name across files", []*mandatev1.Policy{pol("other", policyA)}, "reader"},
		{"same resource twice", []*mandatev1.Policy{pol("x", policyB), pol("x", policyB)}, "twice"},
		{"empty source", []*mandatev1.Policy{pol("empty", "")}, "empty source"},
		{"bad resource name", []*mandatev1.Policy{pol("../etc", policyB)}, "resource name"},
		{"only comments", []*mandatev1.Policy{pol("c", "# nothing\n")}, "no Policy document"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := open(t, t.TempDir())
			v1, err := e.p.ApplyPolicies(ctx, []*mandatev1.Policy{pol("reader", policyA)}, "op")
			if err != nil || v1 != "1" {
				t.Fatalf("good apply: %q %v", v1, err)
			}
			_, err = e.p.ApplyPolicies(ctx, tt.in, "op")
			var inv *InvalidError
			if !errors.As(err, &inv) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("apply = %v, want InvalidError mentioning %q", err, tt.want)
			}
			if got := e.xds.Versions()[mandatev1.PolicyTypeURL]; got != "1" {
				t.Errorf("xDS policy version moved to %s", got)
			}
			stored, sv, _ := load(ctx, e.st, mandatev1.PolicyTypeURL, newPolicy)
			if sv != 1 || len(stored) != 1 || stored["reader"] == nil {
				t.Errorf("store changed: version %d, %d policies", sv, len(stored))
			}
			if ps, _ := e.p.Policies(); len(ps) != 1 {
				t.Errorf("plane holds %d policies", len(ps))
			}
			if n := testutil.ToFloat64(e.p.writes.WithLabelValues("Policy", "invalid")); n != 1 {
				t.Errorf("invalid writes metric = %v", n)
			}
		})
	}
}

func TestApplyDiffPruneDelete(t *testing.T) {
	ctx := context.Background()
	e := open(t, t.TempDir())
	res, err := e.p.ApplyPolicySet(ctx, []*mandatev1.Policy{pol("reader", policyA), pol("writer", policyB)}, false, true, "op")
	if err != nil || !res.Changed || res.Version != "0" || len(res.Changes) != 2 || res.Changes[0].Kind != "added" {
		t.Fatalf("dry run: %+v %v", res, err)
	}
	if ps, _ := e.p.Policies(); len(ps) != 0 {
		t.Fatal("dry run stored policies")
	}
	if _, err := e.p.ApplyPolicies(ctx, []*mandatev1.Policy{pol("reader", policyA), pol("writer", policyB)}, "op"); err != nil {
		t.Fatal(err)
	}
	// Unchanged apply: no new version, no store write.
	res, err = e.p.ApplyPolicySet(ctx, []*mandatev1.Policy{pol("reader", policyA)}, false, false, "op")
	if err != nil || res.Changed || res.Version != "1" {
		t.Fatalf("unchanged apply: %+v %v", res, err)
	}
	// The same content from another path changes nothing either: the
	// source path is metadata, kept from the first apply.
	moved := pol("reader", policyA)
	moved.SourceFile = "elsewhere/reader.yaml"
	res, err = e.p.ApplyPolicySet(ctx, []*mandatev1.Policy{moved}, false, false, "op")
	if err != nil || res.Changed || res.Version != "1" || res.Changes[0].Kind != "unchanged" {
		t.Fatalf("apply from another path: %+v %v", res, err)
	}
	if ps, _ := e.p.Policies(); len(ps) != 2 || ps[0].GetSourceFile() != "reader.yaml" {
		t.Fatalf("policies after an apply from another path: %v", ps)
	}
	if sv, _ := e.st.Version(ctx, mandatev1.PolicyTypeURL); sv != 1 {
		t.Fatalf("store version %d after a no-op apply", sv)
	}
	changed := strings.Replace(policyA, "[GET]", "[GET, HEAD]", 1)
	res, err = e.p.ApplyPolicySet(ctx, []*mandatev1.Policy{pol("reader", changed)}, true, true, "op")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"reader": "changed", "writer": "deleted"}
	for _, c := range res.Changes {
		if want[c.Name] != c.Kind {
			t.Errorf("change %s = %s, want %s", c.Name, c.Kind, want[c.Name])
		}
		if c.Kind == "changed" && !strings.Contains(c.Diff, "-         - methods: [GET]\n+         - methods: [GET, HEAD]\n") {
			t.Errorf("diff:\n%s", c.Diff)
		}
	}
	v, err := e.p.DeletePolicy(ctx, "writer", "op")
	if err != nil || v != "2" {
		t.Fatalf("delete: %q %v", v, err)
	}
	if _, err := e.p.DeletePolicy(ctx, "writer", "op"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	log, err := e.st.AuditLog(ctx, time.Time{}, 0)
	if err != nil || len(log) != 2 || log[0].Action != "policy.apply" || log[1].Action != "policy.delete" || log[1].Actor != "op" {
		t.Fatalf("audit: %+v %v", log, err)
	}
}

func TestRevokeValidation(t *testing.T) {
	ctx := context.Background()
	e := open(t, t.TempDir())
	tests := []struct {
		name string
		rec  revocation.Record
		ok   bool
	}{
		{"subject", revocation.Record{Kind: revocation.KindSubject, Value: "spiffe://example.org/agent/a", Expires: future()}, true},
		{"subject pattern", revocation.Record{Kind: revocation.KindSubject, Value: "spiffe://example.org/team/**", Expires: future()}, true},
		{"task downgrade", revocation.Record{Kind: revocation.KindTask, Value: "t1", Intents: []string{"read"}, Expires: future()}, true},
		{"mandate", revocation.Record{Kind: revocation.KindMandate, Value: "m-1", Expires: future()}, true},
		{"not spiffe", revocation.Record{Kind: revocation.KindSubject, Value: "agent-a", Expires: future()}, false},
		{"no expiry", revocation.Record{Kind: revocation.KindTask, Value: "t"}, false},
		{"past expiry", revocation.Record{Kind: revocation.KindTask, Value: "t", Expires: time.Now().Add(-time.Second)}, false},
		{"no kind", revocation.Record{Value: "t", Expires: future()}, false},
		{"empty intent", revocation.Record{Kind: revocation.KindTask, Value: "t", Intents: []string{""}, Expires: future()}, false},
		{"huge value", revocation.Record{Kind: revocation.KindTask, Value: strings.Repeat("x", 5000), Expires: future()}, false},
	}
	okCount := 0
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec, v, err := e.p.RevokeRecord(ctx, tt.rec, "spiffe://example.org/mandate/operator")
			if !tt.ok {
				var inv *InvalidError
				if !errors.As(err, &inv) {
					t.Fatalf("want InvalidError, got %v", err)
				}
				return
			}
			okCount++
			if err != nil {
				t.Fatal(err)
			}
			if v != itoa(okCount) || !strings.HasPrefix(rec.GetName(), "r-") || rec.GetCreatedBy() != "spiffe://example.org/mandate/operator" || rec.GetCreatedAt() == nil {
				t.Fatalf("record %v version %s", rec, v)
			}
		})
	}
	rs, _ := e.p.Revocations(true)
	if len(rs) != okCount {
		t.Fatalf("%d records stored, want %d", len(rs), okCount)
	}
}

func itoa(n int) string { return string(rune('0' + n)) }

func TestWaitAcked(t *testing.T) {
	ctx := context.Background()
	e := open(t, t.TempDir())
	// Nobody connected: returns at once with 0.
	n, err := e.p.WaitAcked(ctx, mandatev1.RevocationTypeURL, "0")
	if err != nil || n != 0 {
		t.Fatalf("no replicas: %d %v", n, err)
	}
	r1 := startReplica(t, e.addr, "n1")
	r2 := startReplica(t, e.addr, "n2")
	waitFor(t, "two replicas", func() bool { return len(e.p.Status()) == 2 })
	v, err := e.p.Revoke(ctx, revocation.Record{Kind: revocation.KindSubject, Value: "spiffe://example.org/agent/x", Expires: future()}, "op")
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n, err = e.p.WaitAcked(wctx, mandatev1.RevocationTypeURL, v)
	if err != nil || n != 2 {
		t.Fatalf("WaitAcked = %d %v", n, err)
	}
	for _, r := range []*replica{r1, r2} {
		s := r.applied.Load().(xdsclient.State)
		if !s.Revocations.Check(time.Now(), revocation.Query{Subject: "spiffe://example.org/agent/x"}).Revoked {
			t.Fatal("a replica ACKed before holding the revocation")
		}
	}

	// A replica that rejects the next policy ends the wait with a NACK.
	r2.fail.Store(true)
	v, err = e.p.ApplyPolicies(ctx, []*mandatev1.Policy{pol("reader", policyA)}, "op")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = e.p.WaitAcked(wctx, mandatev1.PolicyTypeURL, v)
	var ne *NackError
	if !errors.As(err, &ne) || ne.Node != "n2" || !strings.Contains(ne.Message, "refuses") {
		t.Fatalf("WaitAcked after NACK = %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("NACK did not end the wait promptly")
	}
	// The timeout path names the laggard.
	short, cancel2 := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel2()
	if _, err := e.p.WaitAcked(short, mandatev1.PolicyTypeURL, "99"); err == nil || IsNack(err) {
		t.Fatalf("wait for a future version: %v", err)
	}
	if _, err := e.p.WaitAcked(ctx, mandatev1.PolicyTypeURL, "x"); err == nil {
		t.Fatal("bad version accepted")
	}
}

func TestLag(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	e := open(t, t.TempDir(), WithClock(clock))
	rs := xdsserver.ReplicaStatus{NodeID: "n", Connected: true, Types: map[string]xdsserver.TypeStatus{
		mandatev1.RevocationTypeURL: {AckedVersion: "0"}}}
	if d := e.p.Lag(rs, mandatev1.RevocationTypeURL); d != 0 {
		t.Fatalf("lag when up to date = %v", d)
	}
	exp := now.Add(time.Hour)
	if _, err := e.p.Revoke(ctx, revocation.Record{Kind: revocation.KindTask, Value: "t", Expires: exp}, "op"); err != nil {
		t.Fatal(err)
	}
	advance(3 * time.Second)
	if _, err := e.p.Revoke(ctx, revocation.Record{Kind: revocation.KindTask, Value: "u", Expires: exp}, "op"); err != nil {
		t.Fatal(err)
	}
	advance(2 * time.Second)
	if d := e.p.Lag(rs, mandatev1.RevocationTypeURL); d != 5*time.Second {
		t.Fatalf("lag behind two commits = %v, want 5s", d)
	}
	rs.Types[mandatev1.RevocationTypeURL] = xdsserver.TypeStatus{AckedVersion: "1"}
	if d := e.p.Lag(rs, mandatev1.RevocationTypeURL); d != 2*time.Second {
		t.Fatalf("lag behind one commit = %v, want 2s", d)
	}
}

func TestLineDiff(t *testing.T) {
	tests := []struct{ a, b, want string }{
		{"a\nb\nc\n", "a\nc\n", "  a\n- b\n  c\n"},
		{"a\n", "a\nb\n", "  a\n+ b\n"},
		{"x\n", "y\n", "- x\n+ y\n"},
		{"", "", "  \n"},
	}
	for _, tt := range tests {
		if got := LineDiff(tt.a, tt.b); got != tt.want {
			t.Errorf("LineDiff(%q, %q) = %q, want %q", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestNewRefusesBadArgs(t *testing.T) {
	if _, err := New(context.Background(), nil, nil, discard()); err == nil {
		t.Fatal("nil store accepted")
	}
}

func mustTS(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }
