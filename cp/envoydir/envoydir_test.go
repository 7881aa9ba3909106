package envoydir

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mandate-dev/mandate/internal/testkit"
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

// TestEnvoyLoaderReload: a change on disk is served; an unsafe change is
// refused, counted, and the last good set stays; Reload loads at once.
func TestEnvoyLoaderReload(t *testing.T) {
	dir := t.TempDir()
	good := copySample(t, dir)
	fs := &fakeSetter{}
	reg := prometheus.NewRegistry()
	l, err := New(dir, fs, slog.New(slog.DiscardHandler), reg)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Load(); err != nil {
		t.Fatal(err)
	}
	if ls, cs := fs.served(); len(ls) != 1 || len(cs) != 2 {
		t.Fatalf("served %v %v", ls, cs)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- l.Watch(ctx, 10*time.Millisecond, ready) }()
	<-ready
	ok, bad := l.reloads.WithLabelValues("ok"), l.reloads.WithLabelValues("error")

	// Unsafe: fail open. Refused, the last good set stays.
	unsafe := strings.Replace(string(good), "failure_mode_allow: false", "failure_mode_allow: true", 1)
	if err := os.WriteFile(filepath.Join(dir, "tickets-api.yaml"), []byte(unsafe), 0o600); err != nil {
		t.Fatal(err)
	}
	testkit.WaitUntil(t, "refused reload counted", func() bool { return testutil.ToFloat64(bad) >= 1 })
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
	testkit.WaitUntil(t, "reload with the new cluster", func() bool { _, cs := fs.served(); return len(cs) == 3 })

	// Removal: make before break (the union first, then the new set).
	if err := os.Remove(filepath.Join(dir, "audit.yaml")); err != nil {
		t.Fatal(err)
	}
	testkit.WaitUntil(t, "reload without the cluster", func() bool { _, cs := fs.served(); return len(cs) == 2 })
	fs.mu.Lock()
	n := len(fs.clusters)
	prev := fs.clusters[n-2]
	fs.mu.Unlock()
	if _, ok := prev["audit_sink"]; !ok || len(prev) != 3 {
		t.Fatalf("the removed cluster was not kept until the listeners changed: %v", prev)
	}

	// Reload (SIGHUP) loads again, at once.
	before := testutil.ToFloat64(ok)
	l.Reload("SIGHUP")
	if testutil.ToFloat64(ok) < before+1 {
		t.Fatalf("Reload: %v ok reloads, want %v", testutil.ToFloat64(ok), before+1)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if v := testutil.ToFloat64(l.count.WithLabelValues("Cluster")); v != 2 {
		t.Fatalf("envoy_resources{type=Cluster} %v", v)
	}
}
