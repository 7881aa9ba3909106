package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mandate-dev/mandate/internal/testkit"
	xdsclient "github.com/mandate-dev/mandate/xds/client"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// TestProgressOnLargeRevoke: a revoke of many values reports its steps on
// stderr, a small one prints only its result.
func TestProgressOnLargeRevoke(t *testing.T) {
	addr, _ := startCP(t)
	dir := t.TempDir()
	var vals strings.Builder
	for i := range 150 {
		fmt.Fprintf(&vals, "spiffe://example.org/agent/p%d\n", i)
	}
	big := filepath.Join(dir, "big.txt")
	if err := os.WriteFile(big, []byte(vals.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	conn := []string{"--plaintext", "--addr", addr, "--for", "1h"}
	var out, errOut bytes.Buffer
	if code := run(context.Background(), append([]string{"revoke", "-f", big}, conn...), &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"] read 150 values", "] sending 150 records to mandate-cp in one batch", "] stored 150 records at revocation version 1"} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut.String())
		}
	}
	if strings.Count(out.String(), "\n") != 151 {
		t.Errorf("stdout has %d lines, want one per record and a summary", strings.Count(out.String(), "\n"))
	}
	out.Reset()
	errOut.Reset()
	if code := run(context.Background(), append([]string{"revoke", "--subject", "spiffe://example.org/agent/one"}, conn...), &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if errOut.Len() != 0 {
		t.Errorf("a one-value revoke printed progress: %q", errOut.String())
	}
}

// TestProgressWhileWaiting: a --wait that lasts reports how many replicas
// have ACKed as that number changes. One of two real replicas holds its
// ACK of the revocation back until the other has been reported.
func TestProgressWhileWaiting(t *testing.T) {
	addr, _ := startCP(t)
	release := make(chan struct{})
	follow := func(node string, hold bool) {
		c, err := xdsclient.New(xdsclient.Config{
			Target:      addr,
			DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
			NodeID:      node,
			Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
			Apply: func(s xdsclient.State) error {
				if hold && s.Versions[mandatev1.RevocationTypeURL] == "1" {
					<-release
				}
				return nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = c.Run(ctx); _ = c.Close() }()
		t.Cleanup(func() { cancel(); <-done })
	}
	follow("fast", false)
	follow("slow", true)
	// Both replicas hold the initial (empty) state before the wait starts.
	ac := mandatev1.NewAdminClient(testkit.Dial(t, addr))
	testkit.WaitUntil(t, "two replicas connected", func() bool {
		st, err := ac.Status(context.Background(), &mandatev1.StatusRequest{})
		return err == nil && len(st.GetReplicas()) == 2
	})

	var out bytes.Buffer
	pr, pw := io.Pipe()
	code := make(chan int, 1)
	go func() {
		code <- run(context.Background(), []string{"revoke", "--subject", "spiffe://example.org/agent/x", "--for", "1h",
			"--wait", "--plaintext", "--addr", addr}, &out, pw)
		_ = pw.Close()
	}()
	seen := make(chan string, 1)
	go func() {
		var stderr strings.Builder
		buf := make([]byte, 4096)
		for {
			n, err := pr.Read(buf)
			stderr.Write(buf[:n])
			if strings.Contains(stderr.String(), "ACKed by 1/2 connected replicas") {
				seen <- stderr.String()
				_, _ = io.Copy(io.Discard, pr)
				return
			}
			if err != nil {
				seen <- ""
				return
			}
		}
	}()
	select {
	case s := <-seen:
		if s == "" {
			t.Error("stderr ended without the progress line")
		}
	case <-time.After(20 * time.Second):
		t.Error("no progress line while the wait lasted 20s")
	}
	close(release)
	select {
	case c := <-code:
		if c != 0 || !strings.Contains(out.String(), "enforced by 2/2 replicas") {
			t.Fatalf("exit %d, stdout %q", c, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("revoke --wait did not return after the release")
	}
}

// TestCountReplicasFleetWide: status rows of a fleet (one per node id
// and instance) count each replica once; a node id on two instances is
// ACKed only when both rows say so. Counting rows made a --wait during a
// fail-over report "enforced by 1 of 2" for one replica.
func TestCountReplicasFleetWide(t *testing.T) {
	row := func(node, instance string, connected bool, acked string) *mandatev1.ReplicaStatus {
		return &mandatev1.ReplicaStatus{NodeId: node, Instance: instance, Connected: connected,
			Types: []*mandatev1.ReplicaTypeStatus{{TypeUrl: mandatev1.RevocationTypeURL, AckedVersion: acked}}}
	}
	tests := []struct {
		name                 string
		rows                 []*mandatev1.ReplicaStatus
		wantAcked, wantConns int
	}{
		{"one per instance", []*mandatev1.ReplicaStatus{row("a", "cp-0", true, "7"), row("b", "cp-1", true, "6")}, 1, 2},
		{"one node on two instances, both acked", []*mandatev1.ReplicaStatus{row("a", "cp-0", true, "7"), row("a", "cp-1", true, "8")}, 1, 1},
		{"one node on two instances, one lags", []*mandatev1.ReplicaStatus{row("a", "cp-0", true, "7"), row("a", "cp-1", true, "3")}, 0, 1},
		{"disconnected rows do not count", []*mandatev1.ReplicaStatus{row("a", "cp-0", false, "3"), row("a", "cp-1", true, "7")}, 1, 1},
		{"no ack yet", []*mandatev1.ReplicaStatus{row("a", "", true, "")}, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			acked, conns := countReplicas(tt.rows, mandatev1.RevocationTypeURL, 7)
			if acked != tt.wantAcked || conns != tt.wantConns {
				t.Fatalf("acked %d of %d, want %d of %d", acked, conns, tt.wantAcked, tt.wantConns)
			}
		})
	}
}
