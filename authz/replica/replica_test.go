package replica

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/mandate-dev/mandate/authz"
	"github.com/mandate-dev/mandate/authz/attrs"
	"github.com/mandate-dev/mandate/authz/mcp"
	"github.com/mandate-dev/mandate/internal/envoyreq"
	"github.com/mandate-dev/mandate/internal/lifecycle/lifecycletest"
	"github.com/mandate-dev/mandate/internal/testkit"
)

const examplesDir = "../../policies/examples"

// testConfig is a plaintext replica on loopback with the command line's
// defaults.
func testConfig() Config {
	return Config{
		Listen: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", Plaintext: true,
		TrustDomains: []string{"example.org"}, StaleBudget: 30 * time.Second, StaleMode: StaleAll, MaxRules: 100_000,
		CacheTTL: 2 * time.Second, CacheSize: 1000, MCPMaxBody: mcp.DefaultMaxBytes, MCPMaxDepth: mcp.DefaultMaxDepth,
		MaxHeaderBytes: attrs.DefaultMaxHeaderBytes, MaxRequestBytes: authz.DefaultMaxRequestBytes,
		MaxConcurrentStreams: 100, MandateAudience: "mandate", SVIDTimeout: time.Minute,
	}
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// running is a replica whose Run is under way.
type running struct {
	*Replica
	*lifecycletest.Running
	addrs map[string]string
}

// startReplica builds a replica from cfg and runs it until the test ends.
func startReplica(t *testing.T, cfg Config, logger *slog.Logger) *running {
	t.Helper()
	r, err := New(context.Background(), cfg, logger, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return &running{Replica: r, Running: lifecycletest.Start(t, r.Run), addrs: r.Addrs()}
}

func check(t *testing.T, conn *grpc.ClientConn, p envoyreq.Params) codes.Code {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := authv3.NewAuthorizationClient(conn).Check(ctx, envoyreq.Build(p))
	if err != nil {
		t.Fatalf("Check RPC error: %v", err)
	}
	return codes.Code(resp.GetStatus().GetCode())
}

var configRead = envoyreq.Params{
	Principal: "spiffe://example.org/agent/infra/a1", Destination: "spiffe://example.org/svc/config",
	Method: "GET", Path: "/config/app.yaml", Host: "config.internal",
}

// TestStandalone runs a replica as the quick start does, on the example
// policies (from the directory, or embedded), and checks an allow, a
// deny, readiness, the decision log and a clean stop.
func TestStandalone(t *testing.T) {
	for name, dir := range map[string]string{"policy dir": examplesDir, "embedded examples": ""} {
		t.Run(name, func(t *testing.T) {
			var decisions testkit.SyncBuffer
			cfg := testConfig()
			cfg.PolicyDir, cfg.DecisionLog = dir, &decisions
			r := startReplica(t, cfg, quiet())

			// Serving as soon as Run starts, not a refresh tick later.
			conn := testkit.Dial(t, r.addrs["grpc"])
			hctx, hcancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer hcancel()
			if h, err := healthpb.NewHealthClient(conn).Check(hctx, &healthpb.HealthCheckRequest{}); err != nil ||
				h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("gRPC health right after start = %v, %v; want SERVING", h, err)
			}
			if code := readyz(t, r.addrs["metrics"]); code != http.StatusOK {
				t.Fatalf("/readyz = %d after loading policies", code)
			}
			if c := check(t, conn, configRead); c != codes.OK {
				t.Fatalf("allow case: %v", c)
			}
			deny := configRead
			deny.Path = "/secrets/db-password"
			if c := check(t, conn, deny); c != codes.PermissionDenied {
				t.Fatalf("deny case: %v", c)
			}
			if err := r.Stop(t); err != nil {
				t.Fatalf("Run returned %v on shutdown", err)
			}
			// The decision log was flushed before Run returned: one record
			// per decision.
			var results []string
			for _, line := range strings.Split(strings.TrimSpace(decisions.String()), "\n") {
				var rec map[string]any
				if err := json.Unmarshal([]byte(line), &rec); err != nil {
					t.Fatalf("decision log line %q: %v", line, err)
				}
				results = append(results, rec["result"].(string)+"/"+rec["reason"].(string))
			}
			if strings.Join(results, " ") != "allow/allowed deny/denied_by_rule" {
				t.Fatalf("decision log results %v", results)
			}
			assertFree(t, r.addrs["grpc"], r.addrs["metrics"])
		})
	}
}

func readyz(t *testing.T, addr string) int {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

// assertFree fails unless every address can be bound again: nothing the
// replica opened still holds it.
func assertFree(t *testing.T, addrs ...string) {
	t.Helper()
	for _, a := range addrs {
		l, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatalf("%s still held: %v", a, err)
		}
		_ = l.Close()
	}
}

// TestConfigIsCopied: New keeps its own copy of the configuration. The
// caller rewriting every field and slice element it passed, after New,
// changes nothing in the running replica.
func TestConfigIsCopied(t *testing.T) {
	dir := t.TempDir()
	writePolicy(t, dir, "spiffe://example.org/a")
	cfg := testConfig()
	cfg.PolicyDir = dir
	cfg.TrustDomains = []string{"example.org"}
	cfg.TrustedProxies = []string{"spiffe://example.org/gateway"}
	cfg.LogRedact = []string{"password"}
	cfg.AllowedCallers = []string{"spiffe://example.org/envoy"}
	addrFile := filepath.Join(t.TempDir(), "addrs.json")
	cfg.AddrFile = addrFile
	var stderr testkit.SyncBuffer
	r, err := New(context.Background(), cfg, slog.New(slog.NewJSONHandler(&stderr, nil)), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	kept := fmt.Sprintf("%#v", r.cfg)
	for _, s := range [][]string{cfg.TrustDomains, cfg.TrustedProxies, cfg.LogRedact, cfg.AllowedCallers} {
		for i := range s {
			s[i] = "spiffe://evil.example/x"
		}
	}
	cfg.PolicyDir, cfg.AddrFile, cfg.Listen, cfg.Plaintext = t.TempDir(), filepath.Join(t.TempDir(), "other.json"), "256.0.0.1:1", false
	cfg.StaleMode = "none"
	if now := fmt.Sprintf("%#v", r.cfg); now != kept {
		t.Fatalf("the replica's configuration changed with the caller's:\n%s\n%s", kept, now)
	}
	lifecycletest.Start(t, r.Run)
	conn := testkit.Dial(t, r.Addrs()["grpc"])
	if c := check(t, conn, envoyreq.Params{Principal: "spiffe://example.org/a", Method: "GET", Path: "/", Host: "h"}); c != codes.OK {
		t.Fatalf("a caller in the trust domain given to New: %v", c)
	}
	// The policy directory given to New is the one reloaded.
	writePolicy(t, dir, "spiffe://example.org/b")
	r.Reload()
	if c := check(t, conn, envoyreq.Params{Principal: "spiffe://example.org/b", Method: "GET", Path: "/", Host: "h"}); c != codes.OK {
		t.Fatalf("after a reload of the directory given to New: %v\n%s", c, stderr.String())
	}
	if _, err := os.Stat(addrFile); err != nil {
		t.Fatalf("the address file given to New: %v", err)
	}
}

func writePolicy(t *testing.T, dir, subject string) {
	t.Helper()
	policy := "apiVersion: mandate.dev/v1\nkind: Policy\nmetadata: {name: p}\nspec:\n  rules:\n    - {name: r, effect: allow, subjects: [\"" + subject + "\"]}\n"
	if err := os.WriteFile(filepath.Join(dir, "p.yaml"), []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestPartFailureStopsAll: when one part fails while the replica runs
// (here the ops HTTP server, its listener closed under it), Run stops
// every other part and returns that failure, naming the part.
func TestPartFailureStopsAll(t *testing.T) {
	r := startReplica(t, testConfig(), quiet())
	_ = r.mlis.Close()
	if err := r.Wait(t); err == nil || !strings.HasPrefix(err.Error(), "metrics: ") {
		t.Fatalf("Run = %v, want the metrics server's failure", err)
	}
	assertFree(t, r.addrs["grpc"])
}

// TestNewFailsCleanly: a New that fails releases everything it opened
// before the failure: listeners (their ports bind again), goroutines.
func TestNewFailsCleanly(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	freeAddr := free.Addr().String()
	_ = free.Close()
	before := runtime.NumGoroutine()
	for name, tt := range map[string]struct {
		edit func(*Config)
		want string
	}{
		"metrics port taken":     {func(c *Config) { c.Listen, c.MetricsAddr = freeAddr, held.Addr().String() }, "metrics listen"},
		"check port taken":       {func(c *Config) { c.Listen = held.Addr().String() }, "listen"},
		"both modes":             {func(c *Config) { c.PolicyDir, c.XDSServers = examplesDir, []string{"127.0.0.1:1"} }, "at most one"},
		"plaintext off loopback": {func(c *Config) { c.Listen = "0.0.0.0:0" }, "loopback"},
		"bad policy dir":         {func(c *Config) { c.PolicyDir = t.TempDir() + "/missing" }, "missing"},
		"bad trust domain":       {func(c *Config) { c.TrustDomains = []string{"not a domain!"} }, "trust domain"},
		"bad control plane":      {func(c *Config) { c.XDSServers = []string{"127.0.0.1:1", "10.0.0.1:1"} }, "loopback"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := testConfig()
			cfg.DecisionLog = io.Discard
			tt.edit(&cfg)
			_, err := New(context.Background(), cfg, quiet(), prometheus.NewRegistry())
			if err == nil || !strings.HasPrefix(err.Error(), "replica: ") || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want a replica: error mentioning %q", err, tt.want)
			}
			assertFree(t, freeAddr)
		})
	}
	// Goroutines New started (decision log, cache, dialers) are gone.
	testkit.GoroutinesBackTo(t, before)
}

// TestRunOnce: of two Runs, one is refused at once instead of serving
// twice; the other serves until its context ends.
func TestRunOnce(t *testing.T) {
	r, err := New(context.Background(), testConfig(), quiet(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 2)
	for range 2 {
		go func() { done <- r.Run(ctx) }()
	}
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "Run called twice") {
			t.Fatalf("first Run to return: %v, want a refusal", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("neither Run returned: both serve")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("the serving Run: %v", err)
	}
}

// TestNoWorkloadAPIFailsStartup: with mTLS and no Workload API to get an
// SVID from, New fails after SVIDTimeout with a reason instead of
// hanging without ever serving.
func TestNoWorkloadAPIFailsStartup(t *testing.T) {
	for name, edit := range map[string]func(*Config){
		"standalone":    func(c *Config) { c.PolicyDir = examplesDir },
		"control plane": func(c *Config) { c.XDSServers = []string{"127.0.0.1:1"} },
	} {
		t.Run(name, func(t *testing.T) {
			cfg := testConfig()
			cfg.Plaintext, cfg.AllowedCallers = false, []string{"spiffe://example.org/envoy"}
			cfg.WorkloadAPI = "unix://" + filepath.Join(t.TempDir(), "absent.sock")
			cfg.SVIDTimeout = 200 * time.Millisecond
			edit(&cfg)
			done := make(chan error, 1)
			go func() {
				_, err := New(context.Background(), cfg, quiet(), prometheus.NewRegistry())
				done <- err
			}()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), "workload API") {
					t.Fatalf("New = %v, want a workload API error", err)
				}
			case <-time.After(15 * time.Second):
				t.Fatal("New still waiting for an SVID long after SVIDTimeout")
			}
		})
	}
}

// TestConfigValidation: what New refuses before opening anything.
func TestConfigValidation(t *testing.T) {
	for name, tt := range map[string]struct {
		edit func(*Config)
		want string
	}{
		"no listen":           {func(c *Config) { c.Listen = "" }, "Listen"},
		"no trust domain":     {func(c *Config) { c.TrustDomains = nil }, "trust domain"},
		"bad stale mode":      {func(c *Config) { c.StaleMode = "some" }, "StaleMode"},
		"keys with xds":       {func(c *Config) { c.XDSServers, c.MandateKeysFile = []string{"127.0.0.1:1"}, "k.json" }, "standalone"},
		"mtls without caller": {func(c *Config) { c.Plaintext = false }, "AllowedCallers"},
		"xfcc-by no proxy":    {func(c *Config) { c.RequireXFCCBy = true }, "trusted proxy"},
		"no streams":          {func(c *Config) { c.MaxConcurrentStreams = 0 }, "MaxConcurrentStreams"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := testConfig()
			tt.edit(&cfg)
			_, err := New(context.Background(), cfg, quiet(), prometheus.NewRegistry())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want an error mentioning %q", err, tt.want)
			}
		})
	}
	if _, err := New(context.Background(), testConfig(), nil, nil); err == nil {
		t.Fatal("New without a logger and a registry accepted")
	}
}
