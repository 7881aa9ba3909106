package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/mandate-dev/mandate/internal/envoyreq"
)

func TestFlagValidation(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"both modes", []string{"--plaintext", "--policy-dir", "x", "--xds-server", "y"}, "at most one of --policy-dir"},
		{"mTLS without allowed callers", []string{"--policy-dir", "x"}, "--allowed-caller is required"},
		{"zero svid timeout", []string{"--plaintext", "--svid-timeout", "0"}, "--svid-timeout"},
		{"bad stale mode", []string{"--plaintext", "--policy-dir", "x", "--stale-mode", "some"}, "--stale-mode"},
		{"keys with xds", []string{"--plaintext", "--xds-server", "127.0.0.1:1", "--mandate-keys", "k.json"}, "--mandate-keys is for standalone"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseFlags(tt.args, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("parseFlags(%q) = %v, want an error containing %q", tt.args, err, tt.want)
			}
		})
	}
}

func TestPlaintextRefusedOffLoopback(t *testing.T) {
	err := run(context.Background(), []string{"--policy-dir", "../../policies/examples", "--plaintext",
		"--listen", "0.0.0.0:0", "--metrics-addr", ""}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("run = %v, want a loopback refusal", err)
	}
}

// TestNoWorkloadAPIFailsStartup: with mTLS and no Workload API to get an
// SVID from, run fails after --svid-timeout with a reason instead of
// hanging without ever serving.
func TestNoWorkloadAPIFailsStartup(t *testing.T) {
	for name, mode := range map[string][]string{
		"standalone":    {"--policy-dir", "../../policies/examples"},
		"control plane": {"--xds-server", "127.0.0.1:1"},
	} {
		t.Run(name, func(t *testing.T) {
			sock := "unix://" + filepath.Join(t.TempDir(), "absent.sock")
			done := make(chan error, 1)
			go func() {
				done <- run(context.Background(), append([]string{"--allowed-caller", "spiffe://example.org/envoy",
					"--workload-api", sock, "--svid-timeout", "200ms", "--listen", "127.0.0.1:0", "--metrics-addr", ""}, mode...),
					io.Discard, io.Discard)
			}()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), "workload API") {
					t.Fatalf("run = %v, want a workload API error", err)
				}
			case <-time.After(15 * time.Second):
				t.Fatal("run still waiting for an SVID long after --svid-timeout")
			}
		})
	}
}

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuf) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// TestStandalone runs the binary's run function as the quick start does,
// on the example policies, and checks an allow, a deny, readiness, the
// decision log and a clean shutdown.
func TestStandalone(t *testing.T) {
	for name, args := range map[string][]string{
		"policy dir":        {"--policy-dir", "../../policies/examples"},
		"embedded examples": nil,
	} {
		t.Run(name, func(t *testing.T) { testStandalone(t, args) })
	}
}

func testStandalone(t *testing.T, modeArgs []string) {
	dir := t.TempDir()
	addrFile := filepath.Join(dir, "addrs.json")
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr lockedBuf
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"--plaintext",
			"--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--addr-file", addrFile}, modeArgs...), &stdout, &stderr)
	}()
	var addrs map[string]string
	deadline := time.Now().Add(20 * time.Second)
	for {
		if b, err := os.ReadFile(addrFile); err == nil && json.Unmarshal(b, &addrs) == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("run exited early: %v\n%s", err, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no addr file; stderr:\n%s", stderr.String())
		}
	}

	// Serving as soon as the addresses are out, not a refresh tick later.
	hconn, err := grpc.NewClient(addrs["grpc"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer hconn.Close()
	hctx, hcancel := context.WithTimeout(ctx, 5*time.Second)
	defer hcancel()
	if h, err := healthpb.NewHealthClient(hconn).Check(hctx, &healthpb.HealthCheckRequest{}); err != nil ||
		h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC health right after start = %v, %v; want SERVING", h, err)
	}

	resp, err := http.Get("http://" + addrs["metrics"] + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/readyz = %d after loading policies", resp.StatusCode)
	}

	conn, err := grpc.NewClient(addrs["grpc"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := authv3.NewAuthorizationClient(conn)
	p := envoyreq.Params{
		Principal: "spiffe://example.org/agent/infra/a1", Destination: "spiffe://example.org/svc/config",
		Method: "GET", Path: "/config/app.yaml", Host: "config.internal",
	}
	cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
	defer ccancel()
	allow, err := c.Check(cctx, envoyreq.Build(p))
	if err != nil || allow.GetStatus().GetCode() != int32(codes.OK) {
		t.Fatalf("allow case: %v %v", allow, err)
	}
	p.Path = "/secrets/db-password"
	deny, err := c.Check(cctx, envoyreq.Build(p))
	if err != nil || deny.GetStatus().GetCode() != int32(codes.PermissionDenied) {
		t.Fatalf("deny case: %v %v", deny, err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run returned %v on shutdown", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not stop after cancel")
	}
	// The decision log was flushed on shutdown: one record per decision.
	var results []string
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("decision log line %q: %v", line, err)
		}
		results = append(results, rec["result"].(string)+"/"+rec["reason"].(string))
	}
	if strings.Join(results, " ") != "allow/allowed deny/denied_by_rule" {
		t.Fatalf("decision log results %v", results)
	}
}

func TestHardeningFlags(t *testing.T) {
	o, err := parseFlags([]string{"--plaintext", "--trusted-proxy", "spiffe://example.org/gateway", "--require-xfcc-by",
		"--require-peer-certificate", "--max-header-bytes", "4096", "--max-request-bytes", "65536"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !o.requireXFCCBy || !o.requirePeerCert || o.maxHeaderBytes != 4096 || o.maxRequestBytes != 65536 {
		t.Fatalf("options %+v", o)
	}
	if _, err := parseFlags([]string{"--plaintext", "--require-xfcc-by"}, io.Discard); err == nil {
		t.Fatal("--require-xfcc-by without a --trusted-proxy accepted")
	}
	if _, err := parseFlags([]string{"--plaintext", "--max-header-bytes", "0"}, io.Discard); err == nil {
		t.Fatal("--max-header-bytes 0 accepted")
	}
}
