package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

const sampleDir = "../../envoy/cp-resources"

// TestEnvoyDirProcess runs mandate-cp: an unsafe --envoy-dir stops it
// from starting, with the reason in its log; a good one is served to an
// Envoy over delta ADS.
func TestEnvoyDirProcess(t *testing.T) {
	bad := t.TempDir()
	good, err := os.ReadFile(filepath.Join(sampleDir, "tickets-api.yaml"))
	if err != nil {
		t.Fatal(err)
	}
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
