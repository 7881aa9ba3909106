package instance

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/mandate-dev/mandate/authz"
	"github.com/mandate-dev/mandate/authz/attrs"
	"github.com/mandate-dev/mandate/authz/mcp"
	"github.com/mandate-dev/mandate/authz/replica"
	"github.com/mandate-dev/mandate/cp/admin"
	"github.com/mandate-dev/mandate/cp/drift"
	"github.com/mandate-dev/mandate/cp/plane"
	"github.com/mandate-dev/mandate/cp/store/boltstore"
	"github.com/mandate-dev/mandate/internal/envoyreq"
	"github.com/mandate-dev/mandate/internal/lifecycle/lifecycletest"
	"github.com/mandate-dev/mandate/internal/testkit"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// testConfig is a plaintext instance on loopback and a unix socket, on
// bbolt in a fresh directory, with the command line's defaults.
func testConfig(t *testing.T) Config {
	return Config{
		XDSListen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0",
		AdminSocket: filepath.Join(t.TempDir(), "admin.sock"),
		TrustDomain: "example.org", Plaintext: true, Store: StoreConfig{DataDir: t.TempDir()},
		ShutdownGrace: 5 * time.Second, RevocationRetention: plane.DefaultRevocationRetention,
		AuditMaxAge: plane.DefaultAuditMaxAge, AuditMaxEntries: plane.DefaultAuditMaxEntries,
		KeyRotation: 24 * time.Hour, KeyOverlap: time.Hour, MandateMaxTTL: 15 * time.Minute, DelegationMaxDepth: 3,
		ApprovalWindow: 5 * time.Minute, DriftThreshold: 5, DriftWindow: time.Minute, DriftAction: "revoke",
		DriftCountDeniedByRule: true, DriftMaxActions: drift.DefaultMaxActions, EnvoyDebounce: 250 * time.Millisecond,
	}
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// running is an instance whose Run is under way.
type running struct {
	*Instance
	*lifecycletest.Running
	addrs map[string]string
}

func startInstance(t *testing.T, cfg Config) *running {
	t.Helper()
	in, err := New(context.Background(), cfg, quiet(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return &running{Instance: in, Running: lifecycletest.Start(t, in.Run), addrs: in.Addrs()}
}

// released fails unless everything the instance held is free again: its
// TCP ports bind, its socket file is gone, its bbolt file opens.
func released(t *testing.T, addrs map[string]string, cfg Config) {
	t.Helper()
	for _, name := range []string{"xds", "admin", "metrics"} {
		if a, ok := addrs[name]; ok {
			l, err := net.Listen("tcp", a)
			if err != nil {
				t.Fatalf("%s address %s still held: %v", name, a, err)
			}
			_ = l.Close()
		}
	}
	if _, err := os.Stat(cfg.AdminSocket); !os.IsNotExist(err) {
		t.Fatalf("admin socket %s left behind: %v", cfg.AdminSocket, err)
	}
	st, err := boltstore.Open(context.Background(), cfg.Store.DataDir)
	if err != nil {
		t.Fatalf("the store is still held: %v", err)
	}
	_ = st.Close()
}

const reportsPolicy = `apiVersion: mandate.dev/v1
kind: Policy
metadata: {name: reports}
spec:
  rules:
    - name: agents-read-reports
      effect: allow
      subjects: ["spiffe://example.org/agent/*"]
      actions: [{methods: [GET], paths: ["/reports/*"]}]
`

// TestServes: an assembled instance on bbolt serves the Admin API on its
// listener and its socket and xDS to a real replica, which enforces what
// was applied and revoked; it stops cleanly, releasing every port, the
// socket and the store.
func TestServes(t *testing.T) {
	cfg := testConfig(t)
	in := startInstance(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ac := mandatev1.NewAdminClient(testkit.Dial(t, in.addrs["admin"]))
	if in.addrs["socket"] != cfg.AdminSocket {
		t.Fatalf("addrs %v: no socket", in.addrs)
	}
	sc := mandatev1.NewAdminClient(testkit.Dial(t, "unix://"+cfg.AdminSocket))

	rcfg := replica.Config{Listen: "127.0.0.1:0", Plaintext: true, XDSServers: []string{in.addrs["xds"]}, NodeID: "r1",
		TrustDomains: []string{"example.org"}, StaleBudget: 30 * time.Second, StaleMode: replica.StaleAll,
		MCPMaxBody: mcp.DefaultMaxBytes, MCPMaxDepth: mcp.DefaultMaxDepth, MaxHeaderBytes: attrs.DefaultMaxHeaderBytes,
		MaxRequestBytes: authz.DefaultMaxRequestBytes, MaxConcurrentStreams: 10, MandateAudience: "mandate"}
	rep, err := replica.New(ctx, rcfg, quiet(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, rep.Run)
	check := authv3.NewAuthorizationClient(testkit.Dial(t, rep.Addrs()["grpc"]))
	allowed := func(subject string) bool {
		resp, err := check.Check(ctx, envoyreq.Build(envoyreq.Params{Principal: subject, Method: "GET", Path: "/reports/x", Host: "r"}))
		if err != nil {
			t.Fatal(err)
		}
		return codes.Code(resp.GetStatus().GetCode()) == codes.OK
	}
	waitAcked := func(typeURL, v string) {
		t.Helper()
		w, err := sc.WaitAcked(ctx, &mandatev1.WaitAckedRequest{TypeUrl: typeURL, Version: v, Timeout: durationpb.New(15 * time.Second)})
		if err != nil || w.GetReplicas() != 1 {
			t.Fatalf("WaitAcked(%s %s) through the socket = %v %v", typeURL, v, w, err)
		}
	}
	// WaitAcked counts the replicas connected: wait for this one first.
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		st, err := ac.Status(ctx, &mandatev1.StatusRequest{})
		if err == nil && len(st.GetReplicas()) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replica never connected: %v %v", st, err)
		}
	}
	ap, err := ac.ApplyPolicies(ctx, &mandatev1.ApplyPoliciesRequest{Policies: []*mandatev1.Policy{
		{Name: "reports", Source: []byte(reportsPolicy), SourceFile: "reports.yaml"}}})
	if err != nil {
		t.Fatal(err)
	}
	waitAcked(mandatev1.PolicyTypeURL, ap.GetVersion())
	if !allowed("spiffe://example.org/agent/a") {
		t.Fatal("the replica denies what the applied policy allows")
	}
	rv, err := ac.Revoke(ctx, &mandatev1.RevokeRequest{Kind: "subject", Value: "spiffe://example.org/agent/a", Ttl: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	waitAcked(mandatev1.RevocationTypeURL, rv.GetVersion())
	if allowed("spiffe://example.org/agent/a") || !allowed("spiffe://example.org/agent/b") {
		t.Fatal("the revocation is not enforced exactly")
	}

	if err := in.Stop(t); err != nil {
		t.Fatalf("Run on shutdown: %v", err)
	}
	released(t, in.addrs, cfg)
}

// TestConfigIsCopied: New keeps its own copy of the configuration: the
// caller rewriting the slices it passed, after New, changes nothing.
func TestConfigIsCopied(t *testing.T) {
	cfg := testConfig(t)
	cfg.Operators = []string{"spiffe://example.org/ops"}
	cfg.ReplicaIDs = []string{"spiffe://example.org/authz"}
	cfg.AdminPeers = []string{"spiffe://example.org/orchestrator"}
	cfg.DriftIntents = []string{"read"}
	in, err := New(context.Background(), cfg, quiet(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	kept := fmt.Sprintf("%#v", in.cfg)
	for _, s := range [][]string{cfg.Operators, cfg.ReplicaIDs, cfg.AdminPeers, cfg.DriftIntents} {
		s[0] = "spiffe://evil.example/x"
	}
	cfg.IssuancePolicy, cfg.EnvoyDir, cfg.Store.DataDir = "/etc/passwd", t.TempDir(), t.TempDir()
	if now := fmt.Sprintf("%#v", in.cfg); now != kept {
		t.Fatalf("the instance's configuration changed with the caller's:\n%s\n%s", kept, now)
	}
	addrs := in.Addrs()
	addrs["xds"] = "elsewhere"
	if in.Addrs()["xds"] == "elsewhere" {
		t.Fatal("Addrs hands out the instance's own map")
	}
}

// TestDefaults: without Operators and ReplicaIDs an instance admits
// exactly the trust domain's operator (one SPIFFE ID, not a prefix: an
// SVID for .../mandate/operatorX or operator-2 is no operator) and its
// mandate-authz replicas.
func TestDefaults(t *testing.T) {
	c := Config{TrustDomain: "example.org"}.clone()
	if len(c.ReplicaIDs) != 1 || c.ReplicaIDs[0] != "spiffe://example.org/mandate/authz" || c.Store.InstanceID == "" {
		t.Fatalf("defaults %+v", c)
	}
	a, err := admin.NewAuth(admin.AuthConfig{Operators: c.Operators, UID: -1})
	if err != nil {
		t.Fatal(err)
	}
	for id, ok := range map[string]bool{
		"spiffe://example.org/mandate/operator":          true,
		"spiffe://example.org/mandate/operatorX":         false,
		"spiffe://example.org/mandate/operator-2":        false,
		"spiffe://example.org/mandate/operator/x":        false,
		"spiffe://example.org/mandate/operato":           false,
		"spiffe://example.org.evil/mandate/operator":     false,
		"spiffe://example.org/mandate/operator/../admin": false,
	} {
		if err := a.Authorize(admin.Peer{Actor: id, SPIFFEID: id, UID: -1}); (err == nil) != ok {
			t.Errorf("%s: admitted=%v, want %v", id, err == nil, ok)
		}
	}
}

// TestPartFailureStopsAll: when one part fails while the instance runs
// (here the admin server, its listener closed under it), Run stops every
// other part, returns that failure naming the part, and releases
// everything.
func TestPartFailureStopsAll(t *testing.T) {
	cfg := testConfig(t)
	in := startInstance(t, cfg)
	_ = in.listeners["admin"].Close()
	err := in.Wait(t)
	if err == nil || !strings.HasPrefix(err.Error(), "admin: ") {
		t.Fatalf("Run = %v, want the admin server's failure", err)
	}
	released(t, in.addrs, cfg)
}

// TestNewFailsCleanly: a New that fails, late or early, releases
// everything it opened before the failure: ports bind again, the store
// opens, the socket is gone, no goroutine is left.
func TestNewFailsCleanly(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	free := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	before := runtime.NumGoroutine()
	for name, tt := range map[string]struct {
		edit func(*Config)
		want string
	}{
		"metrics port taken":     {func(c *Config) { c.MetricsAddr = held.Addr().String() }, "metrics listen"},
		"admin port taken":       {func(c *Config) { c.AdminListen = held.Addr().String() }, "admin listen"},
		"xds port taken":         {func(c *Config) { c.XDSListen = held.Addr().String() }, "xds listen"},
		"plaintext off loopback": {func(c *Config) { c.AdminListen = "0.0.0.0:0" }, "loopback"},
		"bad envoy dir":          {func(c *Config) { c.EnvoyDir = c.Store.DataDir + "/missing" }, "envoy dir"},
		"bad replica pattern":    {func(c *Config) { c.ReplicaIDs = []string{"authz"} }, "replica IDs"},
		"no store":               {func(c *Config) { c.Store.DataDir = "" }, "no store"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.XDSListen, cfg.AdminListen, cfg.MetricsAddr = free(), free(), free()
			tt.edit(&cfg)
			_, err := New(context.Background(), cfg, quiet(), prometheus.NewRegistry())
			if err == nil || !strings.HasPrefix(err.Error(), "instance: ") || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want an instance: error mentioning %q", err, tt.want)
			}
			addrs := map[string]string{}
			for name, a := range map[string]string{"xds": cfg.XDSListen, "admin": cfg.AdminListen, "metrics": cfg.MetricsAddr} {
				if a != held.Addr().String() && !strings.HasPrefix(a, "0.0.0.0") {
					addrs[name] = a
				}
			}
			if cfg.Store.DataDir == "" {
				return
			}
			released(t, addrs, cfg)
		})
	}
	testkit.GoroutinesBackTo(t, before)
}

// TestReloadIssuancePolicy: Reload re-reads the issuance policy file; a
// broken one changes nothing.
func TestReloadIssuancePolicy(t *testing.T) {
	var logs testkit.SyncBuffer
	pol := filepath.Join(t.TempDir(), "issuance.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(pol, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("apiVersion: mandate.dev/v1\nkind: IssuancePolicy\nrules: []\n")
	cfg := testConfig(t)
	cfg.IssuancePolicy = pol
	in, err := New(context.Background(), cfg, slog.New(slog.NewTextHandler(&logs, nil)), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	write("rules: [{name: x\n")
	in.Reload()
	write("apiVersion: mandate.dev/v1\nkind: IssuancePolicy\nrules: []\n")
	in.Reload()
	if s := logs.String(); !strings.Contains(s, "issuance policy not reloaded") || !strings.Contains(s, "issuance policy reloaded") {
		t.Fatalf("log:\n%s", s)
	}
}

// TestEnvoyDirWatchedWhenAnnounced: once the address file is written,
// the Envoy directory is watched: a cluster added right then is served.
func TestEnvoyDirWatchedWhenAnnounced(t *testing.T) {
	dir := t.TempDir()
	b, err := os.ReadFile("../../envoy/cp-resources/tickets-api.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tickets-api.yaml"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.EnvoyDir, cfg.EnvoyDebounce = dir, 10*time.Millisecond
	cfg.AddrFile = filepath.Join(t.TempDir(), "addrs.json")
	reg := prometheus.NewRegistry()
	in, err := New(context.Background(), cfg, quiet(), reg)
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, in.Run)
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(time.Millisecond) {
		if _, err := os.Stat(cfg.AddrFile); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no address file")
		}
	}
	extra := "clusters:\n- name: audit_sink\n  type: STATIC\n  connect_timeout: 1s\n  load_assignment:\n    cluster_name: audit_sink\n    endpoints:\n    - lb_endpoints:\n      - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9000}}}\n"
	if err := os.WriteFile(filepath.Join(dir, "audit.yaml"), []byte(extra), 0o600); err != nil {
		t.Fatal(err)
	}
	clusters := func() float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "mandate_cp_envoy_resources" {
				continue
			}
			for _, m := range mf.GetMetric() {
				if m.GetLabel()[0].GetValue() == "Cluster" {
					return m.GetGauge().GetValue()
				}
			}
		}
		return 0
	}
	for deadline := time.Now().Add(15 * time.Second); clusters() != 3; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%v clusters served, want 3: the change after the address file was missed", clusters())
		}
	}
}
