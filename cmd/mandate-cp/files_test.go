package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/mandate-dev/mandate/cp/issuer/rpcutil"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

const issuanceFor = `apiVersion: mandate.dev/v1
kind: IssuancePolicy
rules:
  - name: orchestrator
    callers: ["spiffe://example.org/orchestrator"]
    subjects: ["spiffe://example.org/agent/*"]
    intents: ["INTENT"]
    maxTTL: 10m
    scope:
      destinations: ["spiffe://example.org/svc/tickets"]
      methods: [GET]
      paths: ["/tickets/**"]
`

// TestConfigFilesCheckedFirst: a broken configuration file stops
// mandate-cp before it opens the store or binds a port: the error names
// the file (not the port someone else holds) and the data directory stays
// empty.
func TestConfigFilesCheckedFirst(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("apiVersion: mandate.dev/v1\nkind: IssuancePolicy\nrules: [{name: x, calers: []}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	kek := filepath.Join(dir, "kek")
	if err := os.WriteFile(kek, []byte("k1 not-base64\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		flag, file, want string
	}{
		{"--issuance-policy", bad, "bad.yaml"},
		{"--drift-policy", bad, "bad.yaml"},
		{"--kek-file", kek, "kek"},
		{"--issuance-policy", filepath.Join(dir, "missing.yaml"), "missing.yaml"},
	} {
		data := t.TempDir()
		err := run(context.Background(), []string{"--data-dir", data, "--plaintext", "--xds-listen", held.Addr().String(),
			"--admin-listen", "127.0.0.1:0", "--metrics-addr", "", tt.flag, tt.file}, discardW{})
		if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "address already in use") {
			t.Errorf("%s %s: %v", tt.flag, tt.file, err)
		}
		if ents, _ := os.ReadDir(data); len(ents) != 0 {
			t.Errorf("%s %s: the store was opened before the file was checked: %v", tt.flag, tt.file, ents)
		}
	}
}

// TestSIGHUPReloadsIssuancePolicy: SIGHUP re-reads --issuance-policy; a
// broken file is logged and the policy in force stays; the process never
// dies of it.
func TestSIGHUPReloadsIssuancePolicy(t *testing.T) {
	dir := t.TempDir()
	pol := filepath.Join(dir, "issuance.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(pol, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(strings.Replace(issuanceFor, "INTENT", "triage", 1))
	cp := start(t, binCP, "--data-dir", t.TempDir(), "--plaintext", "--xds-listen", "127.0.0.1:0",
		"--admin-listen", "127.0.0.1:0", "--metrics-addr", "", "--issuance-policy", pol)
	conn, err := grpc.NewClient(cp.addrs["admin"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	mc := mandatev1.NewMandatesClient(conn)
	issue := func() codes.Code {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ctx = metadata.AppendToOutgoingContext(ctx, rpcutil.DevCallerHeader, "spiffe://example.org/orchestrator")
		_, err := mc.IssueMandate(ctx, &mandatev1.IssueMandateRequest{Subject: "spiffe://example.org/agent/a", Task: "t-1",
			Intent: "triage", Ttl: durationpb.New(5 * time.Minute),
			Scope: &mandatev1.MandateScope{Destinations: []string{"spiffe://example.org/svc/tickets"}, Methods: []string{"GET"}, Paths: []string{"/tickets/1"}}})
		return status.Code(err)
	}
	hup := func(wantLog string) {
		t.Helper()
		if err := cp.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "log line "+wantLog, func() bool { return strings.Count(logOf(cp), wantLog) == 1 })
	}
	if c := issue(); c != codes.OK {
		t.Fatalf("issue under the first policy: %v", c)
	}
	write("rules: [{name: x\n")
	hup("issuance policy not reloaded")
	if c := issue(); c != codes.OK {
		t.Fatalf("a broken file changed the policy in force: %v", c)
	}
	write(strings.Replace(issuanceFor, "INTENT", "deploy", 1))
	hup("issuance policy reloaded")
	if c := issue(); c != codes.PermissionDenied {
		t.Fatalf("issue after a reload that no longer allows triage: %v", c)
	}
	select {
	case <-cp.done:
		t.Fatalf("mandate-cp exited: %v\n%s", cp.err, logOf(cp))
	default:
	}
}
