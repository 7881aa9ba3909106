package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/mandate-dev/mandate/internal/cmdutil"
	"github.com/mandate-dev/mandate/internal/transport"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

const sampleDir = "../../envoy/cp-resources"

// fakeSetter records what the loader serves.
type fakeSetter struct {
	mu        sync.Mutex
	listeners map[string]*listenerv3.Listener
	clusters  []map[string]*clusterv3.Cluster // every SetClusters call
}

func (f *fakeSetter) SetListeners(m map[string]*listenerv3.Listener) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.listeners = m
	return "1", nil
}

func (f *fakeSetter) SetClusters(m map[string]*clusterv3.Cluster) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clusters = append(f.clusters, m)
	return "1", nil
}

func (f *fakeSetter) served() (listeners, clusters []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for n := range f.listeners {
		listeners = append(listeners, n)
	}
	if len(f.clusters) > 0 {
		for n := range f.clusters[len(f.clusters)-1] {
			clusters = append(clusters, n)
		}
	}
	return listeners, clusters
}

func copySample(t *testing.T, dir string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(sampleDir, "tickets-api.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tickets-api.yaml"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestEnvoyLoaderReload: a change on disk is served; an unsafe change is
// refused, counted, and the last good set stays; SIGHUP reloads.
func TestEnvoyLoaderReload(t *testing.T) {
	dir := t.TempDir()
	good := copySample(t, dir)
	fs := &fakeSetter{}
	reg := prometheus.NewRegistry()
	l, err := newEnvoyLoader(dir, fs, slog.New(slog.DiscardHandler), reg)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.load(); err != nil {
		t.Fatal(err)
	}
	if ls, cs := fs.served(); len(ls) != 1 || len(cs) != 2 {
		t.Fatalf("served %v %v", ls, cs)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- l.watch(ctx, 10*time.Millisecond, ready) }()
	<-ready
	ok, bad := l.reloads.WithLabelValues("ok"), l.reloads.WithLabelValues("error")

	// Unsafe: fail open. Refused, the last good set stays.
	unsafe := strings.Replace(string(good), "failure_mode_allow: false", "failure_mode_allow: true", 1)
	if err := os.WriteFile(filepath.Join(dir, "tickets-api.yaml"), []byte(unsafe), 0o600); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "refused reload counted", func() bool { return testutil.ToFloat64(bad) >= 1 })
	if ls, cs := fs.served(); len(ls) != 1 || len(cs) != 2 || testutil.ToFloat64(ok) != 1 {
		t.Fatalf("after a refused reload: served %v %v, ok reloads %v", ls, cs, testutil.ToFloat64(ok))
	}

	// A good change: a second file with one more cluster.
	if err := os.WriteFile(filepath.Join(dir, "tickets-api.yaml"), good, 0o600); err != nil {
		t.Fatal(err)
	}
	extra := "clusters:\n- name: audit_sink\n  type: STATIC\n  connect_timeout: 1s\n  load_assignment:\n    cluster_name: audit_sink\n    endpoints:\n    - lb_endpoints:\n      - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9000}}}\n"
	if err := os.WriteFile(filepath.Join(dir, "audit.yaml"), []byte(extra), 0o600); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "reload with the new cluster", func() bool { _, cs := fs.served(); return len(cs) == 3 })

	// Removal: make before break (the union first, then the new set).
	if err := os.Remove(filepath.Join(dir, "audit.yaml")); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "reload without the cluster", func() bool { _, cs := fs.served(); return len(cs) == 2 })
	fs.mu.Lock()
	n := len(fs.clusters)
	prev := fs.clusters[n-2]
	fs.mu.Unlock()
	if _, ok := prev["audit_sink"]; !ok || len(prev) != 3 {
		t.Fatalf("the removed cluster was not kept until the listeners changed: %v", prev)
	}

	// SIGHUP reloads.
	before := testutil.ToFloat64(ok)
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "SIGHUP reload", func() bool { return testutil.ToFloat64(ok) > before })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if v := testutil.ToFloat64(l.count.WithLabelValues("Cluster")); v != 2 {
		t.Fatalf("envoy_resources{type=Cluster} %v", v)
	}
}

func tlsPeer(t *testing.T, uri string) context.Context {
	t.Helper()
	cert := &x509.Certificate{}
	if uri != "" {
		u, err := url.Parse(uri)
		if err != nil {
			t.Fatal(err)
		}
		cert.URIs = []*url.URL{u}
	}
	return peer.NewContext(context.Background(), &peer.Peer{
		AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}}})
}

func TestPeerKindFromSPIFFEID(t *testing.T) {
	e := &envoyOptions{ids: cmdutil.List{"spiffe://example.org/envoy/*", "spiffe://example.org/mandate/both"}}
	opts, err := e.serverOptions([]string{"spiffe://example.org/mandate/authz", "spiffe://example.org/mandate/both"})
	if err != nil || len(opts) != 1 {
		t.Fatalf("serverOptions: %v", err)
	}
	if _, err := e.serverOptions(nil); err == nil {
		t.Fatal("serverOptions accepted no replica patterns")
	}
	if _, err := (&envoyOptions{ids: cmdutil.List{"example.org/envoy"}}).serverOptions([]string{"spiffe://example.org/a"}); err == nil {
		t.Fatal("serverOptions accepted an --envoy-id that is not a SPIFFE ID pattern")
	}
	repAuth, envAuth := mustAuth(t, "spiffe://example.org/mandate/authz", "spiffe://example.org/mandate/both"),
		mustAuth(t, "spiffe://example.org/envoy/*", "spiffe://example.org/mandate/both")
	tests := []struct {
		name    string
		id      string
		want    xdsserver.NodeKind
		wantErr string
	}{
		{"replica", "spiffe://example.org/mandate/authz", xdsserver.NodeReplica, ""},
		{"envoy", "spiffe://example.org/envoy/tickets", xdsserver.NodeEnvoy, ""},
		{"both", "spiffe://example.org/mandate/both", xdsserver.NodeUnknown, "both"},
		{"neither", "spiffe://example.org/agent/a", xdsserver.NodeUnknown, "neither"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := kindOf(spiffeid.RequireFromString(tt.id), repAuth, envAuth)
			if got != tt.want || (tt.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("kindOf = %q, %v; want %q, error mentioning %q", got, err, tt.want, tt.wantErr)
			}
		})
	}
	if k, err := kindOf(spiffeid.RequireFromString("spiffe://example.org/envoy/x"), repAuth, nil); err == nil || k != xdsserver.NodeUnknown {
		t.Fatalf("Envoy identity without --envoy-id: %q %v", k, err)
	}
	// Plaintext (--plaintext, loopback): no identity, no error.
	if k, err := peerKind(context.Background(), repAuth, envAuth); err != nil || k != xdsserver.NodeUnknown {
		t.Fatalf("plaintext peer: %q %v", k, err)
	}
	// A TLS peer whose ID no go-spiffe credentials proved is refused,
	// whatever its certificate says.
	if k, err := peerKind(tlsPeer(t, "spiffe://example.org/mandate/authz"), repAuth, envAuth); err == nil || k != xdsserver.NodeUnknown {
		t.Fatalf("hand-built TLS peer: %q %v", k, err)
	}
}

func mustAuth(t *testing.T, pats ...string) tlsconfig.Authorizer {
	t.Helper()
	a, err := transport.Authorizer(pats)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestEnvoyDirProcess runs mandate-cp: an unsafe --envoy-dir stops it
// from starting, with the reason in its log; a good one is served to an
// Envoy over delta ADS.
func TestEnvoyDirProcess(t *testing.T) {
	bad := t.TempDir()
	good := copySample(t, bad)
	if err := os.WriteFile(filepath.Join(bad, "tickets-api.yaml"),
		[]byte(strings.Replace(string(good), "include_peer_certificate: true", "include_peer_certificate: false", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binCP, "--data-dir", t.TempDir(), "--plaintext", "--xds-listen", "127.0.0.1:0",
		"--admin-listen", "", "--metrics-addr", "", "--envoy-dir", bad)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !strings.Contains(string(out), "tickets-api.yaml: listener inbound_mtls") ||
		!strings.Contains(string(out), "include_peer_certificate") {
		t.Fatalf("mandate-cp with an unsafe --envoy-dir: %v\n%s", err, out)
	}

	p := start(t, binCP, "--data-dir", t.TempDir(), "--plaintext", "--xds-listen", "127.0.0.1:0",
		"--admin-listen", "", "--metrics-addr", "", "--log-level", "warn", "--envoy-dir", sampleDir)
	conn := dial(t, p.addrs["xds"])
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "tickets-api-sidecar"}, TypeUrl: xdsserver.ListenerTypeURL}); err != nil {
		t.Fatal(err)
	}
	r, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	l := &listenerv3.Listener{}
	if len(r.GetResources()) != 1 || r.GetResources()[0].GetResource().UnmarshalTo(l) != nil || l.GetName() != "inbound_mtls" {
		t.Fatalf("LDS from mandate-cp: %v", r)
	}
	if err := st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: xdsserver.ListenerTypeURL, ResponseNonce: r.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	p.stop(t)
}
