package xdsclient

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/authz/revocation"
	"github.com/mandate-dev/mandate/internal/testkit"
	"github.com/mandate-dev/mandate/xds/mandatev1"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

var farFuture = time.Date(2999, 1, 1, 0, 0, 0, 0, time.UTC)

func policyYAML(name, subject string) string {
	return fmt.Sprintf(`apiVersion: mandate.dev/v1
kind: Policy
metadata:
  name: %s
spec:
  rules:
    - name: allow-all
      effect: allow
      subjects: [%q]
`, name, subject)
}

func pol(name, src string) *mandatev1.Policy {
	return &mandatev1.Policy{Name: name, Source: []byte(src), SourceFile: name + ".yaml", Version: mandatev1.PolicyVersion([]byte(src))}
}

func goodPolicy(name string) *mandatev1.Policy {
	return pol(name, policyYAML(name, "spiffe://example.org/agent/"+name))
}

func badPolicy(name string) *mandatev1.Policy {
	return pol(name, policyYAML(name, "spiffe://example.org/agent/x")+"      when: \"1 +\"\n")
}

func pols(ps ...*mandatev1.Policy) map[string]*mandatev1.Policy {
	m := map[string]*mandatev1.Policy{}
	for _, p := range ps {
		m[p.GetName()] = p
	}
	return m
}

func revs(names ...string) map[string]*mandatev1.Revocation {
	m := map[string]*mandatev1.Revocation{}
	for _, n := range names {
		m[n] = &mandatev1.Revocation{Name: n, Kind: "task", Value: "task-" + n, Expires: timestamppb.New(farFuture)}
	}
	return m
}

func key(name string) *mandatev1.VerificationKey {
	pub := make(ed25519.PublicKey, ed25519.PublicKeySize)
	copy(pub, name)
	return &mandatev1.VerificationKey{Name: name, Algorithm: "EdDSA", PublicKey: pub}
}

func approval(name string) *mandatev1.Approval {
	return &mandatev1.Approval{Name: name, Subject: "spiffe://example.org/agent/a", Method: "POST", Path: "/pay",
		Expires: timestamppb.New(farFuture), ApprovedBy: "spiffe://example.org/user/alice"}
}

// recorder is an Apply that keeps the last State and signals changes.
type recorder struct {
	mu      sync.Mutex
	last    State
	calls   int
	changed chan struct{}
	fail    func(State) error
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{})} }

func (r *recorder) apply(s State) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		if err := r.fail(s); err != nil {
			return err
		}
	}
	r.last, r.calls = s, r.calls+1
	close(r.changed)
	r.changed = make(chan struct{})
	return nil
}

func (r *recorder) wait(t *testing.T, what string, cond func(State) bool) State {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		r.mu.Lock()
		s, ch, calls := r.last, r.changed, r.calls
		r.mu.Unlock()
		if calls > 0 && cond(s) {
			return s
		}
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("timed out waiting for state: %s (last: %s)", what, describe(s))
		}
	}
}

func describe(s State) string {
	var pn []string
	for _, p := range s.Policies.Policies() {
		pn = append(pn, p.Metadata.Name)
	}
	return fmt.Sprintf("policies=%v revocations=%v approvals=%d keys=%d versions=%v",
		pn, revIDs(s.Revocations), len(s.Approvals), len(s.Keys), s.Versions)
}

func policyNames(s State) []string {
	var out []string
	for _, p := range s.Policies.Policies() {
		out = append(out, p.Metadata.Name)
	}
	slices.Sort(out)
	return out
}

func revIDs(s *revocation.Set) []string {
	if s == nil {
		return nil
	}
	var out []string
	for _, r := range s.Records() {
		out = append(out, r.ID)
	}
	slices.Sort(out)
	return out
}

// controlPlane is an xdsserver on 127.0.0.1:0. Clients dial it through
// dialer, which follows the plane across restarts.
type controlPlane struct {
	srv  *xdsserver.Server
	g    *grpc.Server
	addr string
	// initial records each stream's initial_resource_versions by type.
	mu      sync.Mutex
	initial []map[string]map[string]string
}

func startCP(t testing.TB, opts ...xdsserver.Option) *controlPlane {
	t.Helper()
	srv, err := xdsserver.New(discard(), append([]xdsserver.Option{xdsserver.WithRegisterer(prometheus.NewRegistry())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cp := &controlPlane{srv: srv, addr: lis.Addr().String()}
	cp.g = grpc.NewServer(grpc.StreamInterceptor(func(s any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		return h(s, &recordingStream{ServerStream: ss, cp: cp, seen: map[string]map[string]string{}})
	}))
	srv.Register(cp.g)
	go func() { _ = cp.g.Serve(lis) }()
	t.Cleanup(cp.stop)
	return cp
}

func (cp *controlPlane) stop() {
	cp.srv.Close()
	cp.g.Stop()
}

type recordingStream struct {
	grpc.ServerStream
	cp   *controlPlane
	seen map[string]map[string]string
	n    int
}

func (s *recordingStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if req, ok := m.(*discovery.DeltaDiscoveryRequest); ok && err == nil && req.GetResponseNonce() == "" && s.n < 4 {
		s.n++
		s.seen[req.GetTypeUrl()] = req.GetInitialResourceVersions()
		if s.n == 4 {
			s.cp.mu.Lock()
			s.cp.initial = append(s.cp.initial, s.seen)
			s.cp.mu.Unlock()
		}
	}
	return err
}

// dialer dials whatever address target holds.
func dialConn(t testing.TB, target *atomic.Value) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///control-plane",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", target.Load().(string))
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func runClient(t *testing.T, cfg Config) (*Client, func()) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = discard()
	}
	if cfg.BackoffMin == 0 {
		cfg.BackoffMin, cfg.BackoffMax = 10*time.Millisecond, 100*time.Millisecond
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	stop := func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
	}
	return c, stop
}

func waitAcked(t *testing.T, srv *xdsserver.Server, typeURL, version string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := srv.WaitAcked(ctx, typeURL, version); err != nil {
		t.Fatal(err)
	}
}

func setAll(t *testing.T, srv *xdsserver.Server, p map[string]*mandatev1.Policy, r map[string]*mandatev1.Revocation) map[string]string {
	t.Helper()
	v := map[string]string{}
	var err error
	if v[mandatev1.PolicyTypeURL], err = srv.SetPolicies(p); err != nil {
		t.Fatal(err)
	}
	if v[mandatev1.RevocationTypeURL], err = srv.SetRevocations(r); err != nil {
		t.Fatal(err)
	}
	if v[mandatev1.ApprovalTypeURL], err = srv.SetApprovals(map[string]*mandatev1.Approval{"a1": approval("a1")}); err != nil {
		t.Fatal(err)
	}
	if v[mandatev1.VerificationKeyTypeURL], err = srv.SetKeys(map[string]*mandatev1.VerificationKey{"k1": key("k1")}); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestConverge(t *testing.T) {
	cp := startCP(t)
	versions := setAll(t, cp.srv, pols(goodPolicy("p1"), goodPolicy("p2")), revs("r1"))
	var target atomic.Value
	target.Store(cp.addr)
	rec := newRecorder()
	reg := prometheus.NewRegistry()
	c, stop := runClient(t, Config{Conn: dialConn(t, &target), NodeID: "replica-1", Apply: rec.apply, Registerer: reg})
	defer stop()

	s := rec.wait(t, "all four types", func(s State) bool { return len(s.Versions) == 4 })
	for typ, v := range versions {
		waitAcked(t, cp.srv, typ, v)
		if s.Versions[typ] != v {
			t.Errorf("client version of %s = %q, server %q", typ, s.Versions[typ], v)
		}
	}
	if !c.Synced() || c.LastContact().IsZero() {
		t.Fatalf("Synced %v LastContact %v after full sync", c.Synced(), c.LastContact())
	}
	if got := policyNames(s); !slices.Equal(got, []string{"p1", "p2"}) {
		t.Fatalf("policies %v", got)
	}
	if got := revIDs(s.Revocations); !slices.Equal(got, []string{"r1"}) {
		t.Fatalf("revocations %v", got)
	}
	if len(s.Approvals) != 1 || s.Approvals[0].GetName() != "a1" || len(s.Keys) != 1 || s.Keys[0].GetName() != "k1" {
		t.Fatalf("approvals/keys: %s", describe(s))
	}
	if v := s.Revocations.Check(time.Now(), revocation.Query{Subject: "spiffe://example.org/a", Task: "task-r1"}); !v.Revoked {
		t.Fatal("revocation r1 not enforced")
	}

	// Add a revocation and remove a policy.
	vr, _ := cp.srv.SetRevocations(revs("r1", "r2"))
	vp, _ := cp.srv.SetPolicies(pols(goodPolicy("p1")))
	waitAcked(t, cp.srv, mandatev1.RevocationTypeURL, vr)
	waitAcked(t, cp.srv, mandatev1.PolicyTypeURL, vp)
	s = rec.wait(t, "update", func(s State) bool {
		return s.Versions[mandatev1.PolicyTypeURL] == vp && s.Versions[mandatev1.RevocationTypeURL] == vr
	})
	if got := policyNames(s); !slices.Equal(got, []string{"p1"}) {
		t.Fatalf("policies after removal %v", got)
	}
	if got := revIDs(s.Revocations); !slices.Equal(got, []string{"r1", "r2"}) {
		t.Fatalf("revocations after add %v", got)
	}
	st := cp.srv.Status()
	if len(st) != 1 || st[0].NodeID != "replica-1" || st[0].Types[mandatev1.RevocationTypeURL].AckedVersion != vr {
		t.Fatalf("server status %+v", st)
	}
	if got := metricValue(t, c.m.applied.WithLabelValues("Revocation")); got != 2 {
		t.Fatalf("applied metric %v, want 2", got)
	}
	if got := metricValue(t, c.m.connected); got != 1 {
		t.Fatalf("connected metric %v, want 1", got)
	}
}

func TestNackKeepsPoliciesAndRevocationsStillApply(t *testing.T) {
	cp := startCP(t)
	setAll(t, cp.srv, pols(goodPolicy("p1"), goodPolicy("p2")), revs("r1"))
	var target atomic.Value
	target.Store(cp.addr)
	rec := newRecorder()
	c, stop := runClient(t, Config{Conn: dialConn(t, &target), NodeID: "replica-1", Apply: rec.apply})
	defer stop()
	good := rec.wait(t, "synced", func(s State) bool { return len(s.Versions) == 4 })
	goodPolicyVersion := good.Versions[mandatev1.PolicyTypeURL]
	goodSetVersion := good.Policies.Version()

	// p1 changes validly, p2 breaks, and a revocation arrives: the policy
	// push is rejected as a whole, the revocation is enforced.
	changedP1 := pol("p1", policyYAML("p1", "spiffe://example.org/agent/changed"))
	vp, _ := cp.srv.SetPolicies(pols(changedP1, badPolicy("p2")))
	vr, _ := cp.srv.SetRevocations(revs("r1", "r2"))
	waitAcked(t, cp.srv, mandatev1.RevocationTypeURL, vr)
	s := rec.wait(t, "revocation r2", func(s State) bool { return slices.Contains(revIDs(s.Revocations), "r2") })
	if s.Policies.Version() != goodSetVersion || s.Versions[mandatev1.PolicyTypeURL] != goodPolicyVersion {
		t.Fatalf("policies changed after a rejected push: %s", describe(s))
	}
	var ts xdsserver.TypeStatus
	deadline := time.Now().Add(10 * time.Second)
	for ts.NackedVersion != vp && time.Now().Before(deadline) {
		ts = cp.srv.Status()[0].Types[mandatev1.PolicyTypeURL]
		time.Sleep(5 * time.Millisecond)
	}
	if ts.NackedVersion != vp || !strings.Contains(ts.NackError, `Policy "p2"`) || ts.AckedVersion != goodPolicyVersion {
		t.Fatalf("policy status after bad push: %+v", ts)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	if err := cp.srv.WaitAcked(ctx, mandatev1.PolicyTypeURL, vp); err == nil {
		t.Fatal("WaitAcked succeeded for a NACKed policy version")
	}
	cancel()
	if got := metricValue(t, c.m.nacks.WithLabelValues("Policy")); got != 1 {
		t.Fatalf("nacks metric %v, want 1", got)
	}

	// Fix p2 alone: the server sends only p2, and the replica must end
	// up with the changed p1 it received alongside the broken p2.
	fixedP2 := pol("p2", policyYAML("p2", "spiffe://example.org/agent/fixed"))
	vp2, _ := cp.srv.SetPolicies(pols(changedP1, fixedP2))
	waitAcked(t, cp.srv, mandatev1.PolicyTypeURL, vp2)
	s = rec.wait(t, "fixed policies", func(s State) bool { return s.Versions[mandatev1.PolicyTypeURL] == vp2 })
	var subjects []string
	for _, p := range s.Policies.Policies() {
		subjects = append(subjects, p.Spec.Rules[0].Subjects...)
	}
	slices.Sort(subjects)
	if want := []string{"spiffe://example.org/agent/changed", "spiffe://example.org/agent/fixed"}; !slices.Equal(subjects, want) {
		t.Fatalf("subjects after fix %v, want %v", subjects, want)
	}
	if ts := cp.srv.Status()[0].Types[mandatev1.PolicyTypeURL]; ts.NackedVersion != "" {
		t.Fatalf("NACK not cleared after a good version: %+v", ts)
	}
}

func TestApplyErrorNacks(t *testing.T) {
	cp := startCP(t)
	setAll(t, cp.srv, pols(goodPolicy("p1")), revs("r1"))
	var target atomic.Value
	target.Store(cp.addr)
	rec := newRecorder()
	rec.fail = func(s State) error {
		if len(s.Keys) > 1 {
			return errors.New("too many keys for this replica")
		}
		return nil
	}
	c, stop := runClient(t, Config{Conn: dialConn(t, &target), NodeID: "replica-1", Apply: rec.apply})
	defer stop()
	rec.wait(t, "synced", func(s State) bool { return len(s.Versions) == 4 })
	vk, _ := cp.srv.SetKeys(map[string]*mandatev1.VerificationKey{"k1": key("k1"), "k2": key("k2")})
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ts := cp.srv.Status()[0].Types[mandatev1.VerificationKeyTypeURL]
		if ts.NackedVersion == vk {
			if !strings.Contains(ts.NackError, "too many keys") {
				t.Fatalf("nack error %q", ts.NackError)
			}
			if !c.Synced() {
				t.Fatal("a NACK after sync unsynced the client")
			}
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("Apply error was not NACKed")
}

// TestReconnectAfterRestartWithDeletions: resources removed while the
// replica was cut off are removed on reconnect (istio#41494), and the
// replica announces what it has so only changes are sent.
func TestReconnectAfterRestartWithDeletions(t *testing.T) {
	cp1 := startCP(t)
	setAll(t, cp1.srv, pols(goodPolicy("p1"), goodPolicy("p2")), revs("r1", "r2"))
	var target atomic.Value
	target.Store(cp1.addr)
	rec := newRecorder()
	c, stop := runClient(t, Config{Conn: dialConn(t, &target), NodeID: "replica-1", Apply: rec.apply})
	defer stop()
	rec.wait(t, "synced", func(s State) bool { return len(s.Versions) == 4 && len(revIDs(s.Revocations)) == 2 })
	cp1.stop()

	cp2 := startCP(t)
	setAll(t, cp2.srv, pols(goodPolicy("p1")), revs("r2", "r3"))
	target.Store(cp2.addr)
	s := rec.wait(t, "state of the new plane", func(s State) bool {
		return slices.Equal(policyNames(s), []string{"p1"}) && slices.Equal(revIDs(s.Revocations), []string{"r2", "r3"})
	})
	if !c.Synced() {
		t.Fatal("not synced after reconnect")
	}
	_ = s
	// The plane may answer the first types before it has received the
	// last subscription, which the recorder waits for.
	testkit.WaitUntil(t, "the new plane recorded the subscriptions", func() bool {
		cp2.mu.Lock()
		defer cp2.mu.Unlock()
		return len(cp2.initial) > 0
	})
	cp2.mu.Lock()
	defer cp2.mu.Unlock()
	got := cp2.initial[0]
	if p := got[mandatev1.PolicyTypeURL]; len(p) != 2 || p["p1"] == "" || p["p2"] == "" {
		t.Fatalf("initial_resource_versions for policies %v, want p1 and p2", p)
	}
	if r := got[mandatev1.RevocationTypeURL]; len(r) != 2 || r[shardName("r1")] == "" || r[shardName("r2")] == "" {
		t.Fatalf("initial_resource_versions for revocations %v, want the shards of r1 and r2", r)
	}
}

// flakyConn ends every stream it opens after a short random lifetime.
type flakyConn struct {
	grpc.ClientConnInterface
	on atomic.Bool
}

func (f *flakyConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if f.on.Load() {
		ctx2, cancel := context.WithTimeout(ctx, 150*time.Millisecond+time.Duration(time.Now().UnixNano()%100)*time.Millisecond)
		context.AfterFunc(ctx2, cancel)
		ctx = ctx2
	}
	return f.ClientConnInterface.NewStream(ctx, desc, method, opts...)
}

func TestFlappingStreamLosesNothingLeaksNothing(t *testing.T) {
	cp := startCP(t)
	setAll(t, cp.srv, pols(goodPolicy("p1")), revs("r0"))
	var target atomic.Value
	target.Store(cp.addr)
	conn := dialConn(t, &target)
	// Warm the connection so its goroutines are in the baseline.
	warm, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_ = warm.CloseSend()
	_, _ = warm.Recv()
	time.Sleep(50 * time.Millisecond)
	baseline := runtime.NumGoroutine()

	flaky := &flakyConn{ClientConnInterface: conn}
	flaky.on.Store(true)
	rec := newRecorder()
	_, stop := runClient(t, Config{Conn: flaky, NodeID: "replica-1", Apply: rec.apply})
	names := []string{"r0"}
	var last string
	end := time.Now().Add(3 * time.Second)
	for i := 1; time.Now().Before(end); i++ {
		names = append(names, fmt.Sprintf("r%d", i))
		last, err = cp.srv.SetRevocations(revs(names...))
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	flaky.on.Store(false)
	waitAcked(t, cp.srv, mandatev1.RevocationTypeURL, last)
	s := rec.wait(t, "every revocation", func(s State) bool { return s.Versions[mandatev1.RevocationTypeURL] == last })
	want := slices.Clone(names)
	slices.Sort(want)
	if got := revIDs(s.Revocations); !slices.Equal(got, want) {
		t.Fatalf("after flapping: %d revocations, want %d", len(got), len(want))
	}
	stop()
	deadline := time.Now().Add(10 * time.Second)
	for connected(cp.srv) {
		if time.Now().After(deadline) {
			t.Fatal("server still counts the replica connected after the client stopped")
		}
		time.Sleep(5 * time.Millisecond)
	}
	for runtime.NumGoroutine() > baseline+2 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines %d, baseline %d:\n%s", runtime.NumGoroutine(), baseline, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func connected(srv *xdsserver.Server) bool {
	for _, r := range srv.Status() {
		if r.Connected {
			return true
		}
	}
	return false
}
