package admin

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/mandate-dev/mandate/cp/plane"
	"github.com/mandate-dev/mandate/cp/store/boltstore"
	"github.com/mandate-dev/mandate/internal/testcert"
	"github.com/mandate-dev/mandate/internal/transport"
	"github.com/mandate-dev/mandate/xds/mandatev1"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

const goodPolicy = `apiVersion: mandate.dev/v1
kind: Policy
metadata:
  name: reader
spec:
  rules:
    - name: read
      effect: allow
      subjects: ["spiffe://example.org/agent/*"]
`

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// serve starts the Admin service over a real plane on lis with creds.
func serve(t *testing.T, lis net.Listener, creds credentials.TransportCredentials, cfg AuthConfig) (*plane.Plane, *prometheus.Registry) {
	t.Helper()
	ctx := context.Background()
	st, err := boltstore.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	xs, err := xdsserver.New(discard())
	if err != nil {
		t.Fatal(err)
	}
	p, err := plane.New(ctx, st, xs, discard())
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	auth, err := NewAuth(cfg)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := New(p, discard())
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(creds), grpc.UnaryInterceptor(auth.Unary()))
	mandatev1.RegisterAdminServer(g, svc)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(func() { g.Stop(); xs.Close(); _ = st.Close() })
	return p, reg
}

func plaintextClient(t *testing.T, allow bool) (mandatev1.AdminClient, *prometheus.Registry) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, reg := serve(t, lis, insecure.NewCredentials(), AuthConfig{AllowPlaintext: allow, UID: os.Getuid()})
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return mandatev1.NewAdminClient(cc), reg
}

func TestAdminOverPlaintext(t *testing.T) {
	ctx := context.Background()
	c, reg := plaintextClient(t, true)

	bad := &mandatev1.Policy{Name: "bad", SourceFile: "policies/bad.yaml",
		Source: []byte(strings.Replace(goodPolicy, "effect: allow", "effect: perhaps", 1))}
	_, err := c.ApplyPolicies(ctx, &mandatev1.ApplyPoliciesRequest{Policies: []*mandatev1.Policy{bad}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "policies/bad.yaml") ||
		!strings.Contains(err.Error(), `rule "read"`) {
		t.Fatalf("invalid apply: %v", err)
	}

	good := &mandatev1.Policy{Name: "reader", SourceFile: "reader.yaml", Source: []byte(goodPolicy)}
	diff, err := c.ApplyPolicies(ctx, &mandatev1.ApplyPoliciesRequest{Policies: []*mandatev1.Policy{good}, DryRun: true})
	if err != nil || len(diff.GetChanges()) != 1 || diff.GetChanges()[0].GetChange() != "added" {
		t.Fatalf("diff: %v %v", diff, err)
	}
	res, err := c.ApplyPolicies(ctx, &mandatev1.ApplyPoliciesRequest{Policies: []*mandatev1.Policy{good}})
	if err != nil || res.GetVersion() != "1" {
		t.Fatalf("apply: %v %v", res, err)
	}
	list, err := c.ListPolicies(ctx, &mandatev1.ListPoliciesRequest{})
	if err != nil || len(list.GetPolicies()) != 1 || list.GetPolicies()[0].GetVersion() != mandatev1.PolicyVersion([]byte(goodPolicy)) {
		t.Fatalf("list: %v %v", list, err)
	}

	revTests := []struct {
		name string
		req  *mandatev1.RevokeRequest
		code codes.Code
	}{
		{"subject", &mandatev1.RevokeRequest{Kind: "subject", Value: "spiffe://example.org/agent/a", Ttl: durationpb.New(time.Hour), Reason: "leak"}, codes.OK},
		{"downgrade", &mandatev1.RevokeRequest{Kind: "task", Value: "t1", Intents: []string{"read"}, Ttl: durationpb.New(time.Minute)}, codes.OK},
		{"bad kind", &mandatev1.RevokeRequest{Kind: "user", Value: "x", Ttl: durationpb.New(time.Hour)}, codes.InvalidArgument},
		{"no ttl", &mandatev1.RevokeRequest{Kind: "task", Value: "x"}, codes.InvalidArgument},
		{"negative ttl", &mandatev1.RevokeRequest{Kind: "task", Value: "x", Ttl: durationpb.New(-time.Hour)}, codes.InvalidArgument},
		{"not spiffe", &mandatev1.RevokeRequest{Kind: "subject", Value: "bob", Ttl: durationpb.New(time.Hour)}, codes.InvalidArgument},
		{"empty value", &mandatev1.RevokeRequest{Kind: "mandate", Ttl: durationpb.New(time.Hour)}, codes.InvalidArgument},
	}
	lastVersion := ""
	for _, tt := range revTests {
		r, err := c.Revoke(ctx, tt.req)
		if err == nil {
			lastVersion = r.GetVersion()
		}
		if status.Code(err) != tt.code {
			t.Errorf("%s: code %v (%v), want %v", tt.name, status.Code(err), err, tt.code)
			continue
		}
		if tt.code == codes.OK && (r.GetRecord().GetCreatedBy() != PlaintextActor || r.GetRecord().GetName() == "") {
			t.Errorf("%s: record %v", tt.name, r.GetRecord())
		}
	}
	rl, err := c.ListRevocations(ctx, &mandatev1.ListRevocationsRequest{})
	if err != nil || len(rl.GetRevocations()) != 2 || rl.GetVersion() != lastVersion || lastVersion == "" {
		t.Fatalf("revocations: %v %v", rl, err)
	}

	w, err := c.WaitAcked(ctx, &mandatev1.WaitAckedRequest{TypeUrl: mandatev1.RevocationTypeURL, Version: "2"})
	if err != nil || w.GetReplicas() != 0 {
		t.Fatalf("wait with no replicas: %v %v", w, err)
	}
	if _, err := c.WaitAcked(ctx, &mandatev1.WaitAckedRequest{TypeUrl: "nope", Version: "2"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("wait on an unknown type: %v", err)
	}
	st, err := c.Status(ctx, &mandatev1.StatusRequest{})
	if err != nil || st.GetVersions()[mandatev1.PolicyTypeURL] != "1" {
		t.Fatalf("status: %v %v", st, err)
	}
	if _, err := c.DeletePolicy(ctx, &mandatev1.DeletePolicyRequest{Name: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("delete missing: %v", err)
	}

	audit, err := c.AuditLog(ctx, &mandatev1.AuditLogRequest{})
	if err != nil || len(audit.GetEntries()) != 3 {
		t.Fatalf("audit: %v %v", audit, err)
	}
	for _, e := range audit.GetEntries() {
		if e.GetActor() != PlaintextActor || e.GetTime() == nil {
			t.Errorf("audit entry %v", e)
		}
	}
	if n := testutil.ToFloat64(mustCounter(t, reg, "ApplyPolicies", "InvalidArgument")); n != 1 {
		t.Errorf("admin_requests_total{ApplyPolicies,InvalidArgument} = %v", n)
	}
}

func mustCounter(t *testing.T, reg *prometheus.Registry, method, code string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "mandate_cp_admin_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["method"] == method && labels["code"] == code {
				g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "x"})
				g.Set(m.GetCounter().GetValue())
				return g
			}
		}
	}
	return prometheus.NewGauge(prometheus.GaugeOpts{Name: "x"})
}

func TestPlaintextRefusedUnlessAllowed(t *testing.T) {
	c, _ := plaintextClient(t, false)
	_, err := c.Status(context.Background(), &mandatev1.StatusRequest{})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("plaintext call without --plaintext: %v", err)
	}
}

func TestAuthorize(t *testing.T) {
	a, err := NewAuth(AuthConfig{Operators: []string{DefaultOperator("example.org"), "spiffe://example.org/mandate/operators/*"}, UID: 1000})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		p    Peer
		ok   bool
	}{
		{"operator", Peer{SPIFFEID: "spiffe://example.org/mandate/operator", UID: -1}, true},
		{"operator-2 (exact default)", Peer{SPIFFEID: "spiffe://example.org/mandate/operator-2", UID: -1}, false},
		{"operatorX (exact default)", Peer{SPIFFEID: "spiffe://example.org/mandate/operatorX", UID: -1}, false},
		{"written glob", Peer{SPIFFEID: "spiffe://example.org/mandate/operators/bob", UID: -1}, true},
		{"written glob, one segment only", Peer{SPIFFEID: "spiffe://example.org/mandate/operators/bob/x", UID: -1}, false},
		{"agent", Peer{SPIFFEID: "spiffe://example.org/agent/a", UID: -1}, false},
		{"other domain", Peer{SPIFFEID: "spiffe://evil.org/mandate/operator", UID: -1}, false},
		{"same uid", Peer{UID: 1000}, true},
		{"root", Peer{UID: 0}, true},
		{"other uid", Peer{UID: 1001}, false},
		{"plaintext not allowed", Peer{Actor: PlaintextActor, UID: -1}, false},
		{"nothing", Peer{UID: -1}, false},
	}
	for _, tt := range tests {
		if err := a.Authorize(tt.p); (err == nil) != tt.ok {
			t.Errorf("%s: %v", tt.name, err)
		}
	}
	if _, err := NewAuth(AuthConfig{Operators: []string{"operator"}}); err == nil {
		t.Error("non-SPIFFE operator pattern accepted")
	}
}

func TestUnixSocketPeerCred(t *testing.T) {
	dir, err := os.MkdirTemp("", "adm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	sock := filepath.Join(dir, "a.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, lis, UnixCredentials{}, AuthConfig{UID: os.Getuid()})
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := mandatev1.NewAdminClient(cc)
	r, err := c.Revoke(context.Background(), &mandatev1.RevokeRequest{Kind: "task", Value: "t", Ttl: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if want := "unix:uid=" + strconv.Itoa(os.Getuid()); r.GetRecord().GetCreatedBy() != want {
		t.Fatalf("actor %q, want %q", r.GetRecord().GetCreatedBy(), want)
	}
}

// spiffeServer returns mandate-cp's server credentials (go-spiffe mTLS,
// any SVID of ca admitted at the handshake: the interceptor authorizes).
func spiffeServer(t *testing.T, ca *testcert.CA) credentials.TransportCredentials {
	t.Helper()
	return transport.ServerCredentials(ca.SVID(t, "spiffe://example.org/mandate/cp"), ca.Bundle(), tlsconfig.AuthorizeAny())
}

// clientWith returns client credentials presenting a leaf of ca with the
// given URI SANs (none, one or several).
func clientWith(t *testing.T, ca *testcert.CA, uris ...string) credentials.TransportCredentials {
	t.Helper()
	return credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{ca.Leaf(t, uris...)}, InsecureSkipVerify: true}) //nolint:gosec // test: identity is checked server-side
}

func TestMTLSActorIsPeerSPIFFEID(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ca := testcert.NewCA(t, "example.org")
	serve(t, lis, spiffeServer(t, ca), AuthConfig{Operators: []string{"spiffe://example.org/mandate/operator"}})
	dial := func(uris ...string) mandatev1.AdminClient {
		cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(clientWith(t, ca, uris...)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cc.Close() })
		return mandatev1.NewAdminClient(cc)
	}
	ctx := context.Background()
	// A peer whose certificate is no SVID (no URI SAN, two URI SANs) is
	// refused in the handshake: it never reaches the interceptor.
	tests := []struct {
		uris []string
		code codes.Code
	}{
		{[]string{"spiffe://example.org/mandate/operator"}, codes.OK},
		{[]string{"spiffe://example.org/agent/a"}, codes.PermissionDenied},
		{nil, codes.Unavailable},
		{[]string{"spiffe://example.org/mandate/operator", "spiffe://example.org/agent/a"}, codes.Unavailable},
	}
	for _, tt := range tests {
		r, err := dial(tt.uris...).Revoke(ctx, &mandatev1.RevokeRequest{Kind: "task", Value: "t", Ttl: durationpb.New(time.Hour)})
		if status.Code(err) != tt.code {
			t.Errorf("%q: %v, want %v", tt.uris, err, tt.code)
			continue
		}
		if err == nil && r.GetRecord().GetCreatedBy() != tt.uris[0] {
			t.Errorf("actor %q, want %q", r.GetRecord().GetCreatedBy(), tt.uris[0])
		}
		b, err := dial(tt.uris...).RevokeBatch(ctx, &mandatev1.RevokeBatchRequest{Revocations: []*mandatev1.RevokeRequest{
			{Kind: "task", Value: "t1", Ttl: durationpb.New(time.Hour)}, {Kind: "task", Value: "t2", Ttl: durationpb.New(time.Hour)}}})
		if status.Code(err) != tt.code {
			t.Errorf("batch %q: %v, want %v", tt.uris, err, tt.code)
			continue
		}
		for _, rec := range b.GetRecords() {
			if rec.GetCreatedBy() != tt.uris[0] {
				t.Errorf("batch actor %q, want %q", rec.GetCreatedBy(), tt.uris[0])
			}
		}
	}
}

// TestHandBuiltTLSPeerRefused: a TLS connection whose credentials are not
// go-spiffe's proves no SPIFFE ID, so even an operator's certificate is
// refused (transport.PeerID is the one way to a caller's ID).
func TestHandBuiltTLSPeerRefused(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ca := testcert.NewCA(t, "example.org")
	serve(t, lis, credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{ca.Leaf(t, "spiffe://example.org/mandate/cp")},
		ClientAuth: tls.RequireAnyClientCert, MinVersion: tls.VersionTLS12}), AuthConfig{Operators: []string{"spiffe://example.org/mandate/operator"}})
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(clientWith(t, ca, "spiffe://example.org/mandate/operator")))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	_, err = mandatev1.NewAdminClient(cc).Revoke(context.Background(), &mandatev1.RevokeRequest{Kind: "task", Value: "t", Ttl: durationpb.New(time.Hour)})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Revoke over hand-built TLS: %v, want Unauthenticated", err)
	}
}

func TestRevokeBatch(t *testing.T) {
	ctx := context.Background()
	c, reg := plaintextClient(t, true)
	req := func(kind, value string, ttl time.Duration) *mandatev1.RevokeRequest {
		return &mandatev1.RevokeRequest{Kind: kind, Value: value, Ttl: durationpb.New(ttl), Reason: "batch"}
	}
	many := func(n int) []*mandatev1.RevokeRequest {
		out := make([]*mandatev1.RevokeRequest, n)
		for i := range out {
			out[i] = req("subject", "spiffe://example.org/agent/a"+strconv.Itoa(i), time.Hour)
		}
		return out
	}
	tests := []struct {
		name    string
		in      []*mandatev1.RevokeRequest
		code    codes.Code
		msg     string // substring of the error message
		version string // after the call
		stored  int
	}{
		{"empty", nil, codes.InvalidArgument, "1 to 10000", "0", 0},
		{"too many", many(plane.MaxRevokeBatch + 1), codes.InvalidArgument, "1 to 10000", "0", 0},
		{"bad kind in the middle", []*mandatev1.RevokeRequest{req("task", "t", time.Hour), req("user", "x", time.Hour), req("task", "u", time.Hour)},
			codes.InvalidArgument, "revocation 2 of 3: kind", "0", 0},
		{"no ttl last", []*mandatev1.RevokeRequest{req("task", "t", time.Hour), {Kind: "task", Value: "u"}}, codes.InvalidArgument, "revocation 2 of 2: ttl", "0", 0},
		{"plane refuses one", []*mandatev1.RevokeRequest{req("task", "t", time.Hour), req("subject", "bob", time.Hour)}, codes.InvalidArgument, "revocation 2 of 2", "0", 0},
		{"1000 subjects", many(1000), codes.OK, "", "1", 1000},
		{"mixed kinds", []*mandatev1.RevokeRequest{req("task", "t", time.Hour), req("mandate", "m-1", time.Minute),
			{Kind: "subject", Value: "spiffe://example.org/agent/z", Intents: []string{"read"}, Ttl: durationpb.New(time.Hour)}}, codes.OK, "", "2", 1003},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := c.RevokeBatch(ctx, &mandatev1.RevokeBatchRequest{Revocations: tt.in})
			if status.Code(err) != tt.code || !strings.Contains(status.Convert(err).Message(), tt.msg) {
				t.Fatalf("code %v (%v), want %v with %q", status.Code(err), err, tt.code, tt.msg)
			}
			if err == nil {
				if r.GetVersion() != tt.version || len(r.GetRecords()) != len(tt.in) {
					t.Fatalf("version %s, %d records", r.GetVersion(), len(r.GetRecords()))
				}
				for i, rec := range r.GetRecords() {
					if rec.GetValue() != tt.in[i].GetValue() || rec.GetKind() != tt.in[i].GetKind() ||
						rec.GetCreatedBy() != PlaintextActor || rec.GetName() == "" {
						t.Fatalf("record %d = %v, want %v", i, rec, tt.in[i])
					}
				}
			}
			l, err := c.ListRevocations(ctx, &mandatev1.ListRevocationsRequest{})
			if err != nil || l.GetVersion() != tt.version || len(l.GetRevocations()) != tt.stored {
				t.Fatalf("stored: %d at version %s (%v), want %d at %s", len(l.GetRevocations()), l.GetVersion(), err, tt.stored, tt.version)
			}
		})
	}
	audit, err := c.AuditLog(ctx, &mandatev1.AuditLogRequest{})
	if err != nil || len(audit.GetEntries()) != 1003 {
		t.Fatalf("audit: %d entries (%v), want one per record", len(audit.GetEntries()), err)
	}
	if n := testutil.ToFloat64(mustCounter(t, reg, "RevokeBatch", "OK")); n != 2 {
		t.Errorf("admin_requests_total{RevokeBatch,OK} = %v", n)
	}
}

// Auth.Unary recognizes Admin calls by this prefix: it must be the
// generated service's.
func TestServiceNameIsGenerated(t *testing.T) {
	if ServiceName != mandatev1.Admin_ServiceDesc.ServiceName {
		t.Fatalf("ServiceName %q, generated %q", ServiceName, mandatev1.Admin_ServiceDesc.ServiceName)
	}
	if want := "/" + ServiceName + "/Revoke"; mandatev1.Admin_Revoke_FullMethodName != want {
		t.Fatalf("Admin_Revoke_FullMethodName %q, want %q", mandatev1.Admin_Revoke_FullMethodName, want)
	}
}

// TestAuditNewest: the server picks the newest entries (the CLI's
// `audit --limit N`), not the oldest N trimmed by the client.
func TestAuditNewest(t *testing.T) {
	ctx := context.Background()
	c, _ := plaintextClient(t, true)
	var names []string
	for i := range 12 {
		req := &mandatev1.RevokeRequest{Kind: "task", Value: fmt.Sprintf("t-%02d", i), Ttl: durationpb.New(time.Hour)}
		r, err := c.Revoke(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, "revocation/"+r.GetRecord().GetName())
	}
	objects := func(newest bool) []string {
		t.Helper()
		resp, err := c.AuditLog(ctx, &mandatev1.AuditLogRequest{Limit: 3, Newest: newest})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range resp.GetEntries() {
			out = append(out, e.GetObject())
		}
		return out
	}
	oldest, newest := objects(false), objects(true)
	if !slices.Equal(oldest, names[:3]) {
		t.Errorf("oldest 3: %v, want %v", oldest, names[:3])
	}
	if !slices.Equal(newest, names[9:]) {
		t.Errorf("newest 3 (oldest first): %v, want %v", newest, names[9:])
	}
}
