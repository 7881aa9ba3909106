package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mandate-dev/mandate/cp/admin"
	"github.com/mandate-dev/mandate/cp/plane"
	"github.com/mandate-dev/mandate/cp/store/boltstore"
	"github.com/mandate-dev/mandate/xds/mandatev1"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

// startCP serves the Admin API over a real plane on 127.0.0.1:0,
// plaintext, and returns its address and the plane.
func startCP(t *testing.T) (string, *plane.Plane) {
	t.Helper()
	ctx := context.Background()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := boltstore.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	xs, err := xdsserver.New(logger)
	if err != nil {
		t.Fatal(err)
	}
	p, err := plane.New(ctx, st, xs, logger)
	if err != nil {
		t.Fatal(err)
	}
	auth, err := admin.NewAuth(admin.AuthConfig{AllowPlaintext: true, UID: os.Getuid()})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := admin.New(p, logger)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(insecure.NewCredentials()), grpc.UnaryInterceptor(auth.Unary()))
	mandatev1.RegisterAdminServer(g, svc)
	xs.Register(g) // replicas may follow it on the same address
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(func() { g.Stop(); xs.Close(); _ = st.Close() })
	return lis.Addr().String(), p
}

func TestRevokeSeveralValues(t *testing.T) {
	addr, p := startCP(t)
	dir := t.TempDir()
	lines := filepath.Join(dir, "subjects.txt")
	if err := os.WriteFile(lines, []byte("# leaked\nspiffe://example.org/agent/f1\n\n  spiffe://example.org/agent/f2  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	list := filepath.Join(dir, "tasks.yaml")
	if err := os.WriteFile(list, []byte("# tasks\n- t-1\n- \"t-2\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.txt")
	if err := os.WriteFile(bad, []byte("spiffe://example.org/agent/ok\nnot-spiffe\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	conn := []string{"--plaintext", "--addr", addr, "--for", "1h", "--reason", "test"}
	tests := []struct {
		name    string
		args    []string
		code    int
		out     []string // substrings of stdout
		errOut  string   // substring of stderr
		version string   // revocation version after the command
		stored  int      // records stored after the command
	}{
		{"one subject uses Revoke", []string{"revoke", "--subject", "spiffe://example.org/agent/a"}, 0,
			[]string{"subject spiffe://example.org/agent/a until", "(revocation version 1)"}, "", "1", 1},
		{"several flags, one version", []string{"revoke", "--subject", "spiffe://example.org/agent/b", "--subject", "spiffe://example.org/agent/c",
			"--task", "t-9", "--mandate", "m-9", "--wait", "--allow-none"}, 0,
			[]string{"subject spiffe://example.org/agent/b", "subject spiffe://example.org/agent/c", "task t-9", "mandate m-9",
				"4 revocations stored at revocation version 2"}, "ACK revocation version 2", "2", 5},
		{"file of lines", []string{"revoke", "-f", lines}, 0,
			[]string{"subject spiffe://example.org/agent/f1", "subject spiffe://example.org/agent/f2", "2 revocations stored at revocation version 3"}, "", "3", 7},
		{"YAML list of tasks, downgrade", []string{"downgrade", "-f", list, "--kind", "task", "--intents", "read"}, 0,
			[]string{"downgrade ", "task t-1", "task t-2", "2 downgrades stored at revocation version 4"}, "", "4", 9},
		{"one invalid value: nothing stored", []string{"revoke", "-f", bad, "--subject", "spiffe://example.org/agent/z"}, 1,
			nil, "revocation 3 of 3", "4", 9},
		{"duplicate value", []string{"revoke", "--subject", "spiffe://example.org/agent/d", "--subject", "spiffe://example.org/agent/d"}, 1,
			nil, "given twice", "4", 9},
		{"no value", []string{"revoke"}, 2, nil, "at least one of", "4", 9},
		{"bad kind", []string{"revoke", "-f", lines, "--kind", "user"}, 2, nil, "--kind", "4", 9},
		{"mandate kind refused for downgrade", []string{"downgrade", "-f", list, "--kind", "mandate", "--intents", "read"}, 2, nil, "--kind", "4", 9},
		{"missing file", []string{"revoke", "-f", filepath.Join(dir, "nope")}, 1, nil, "nope", "4", 9},
		// Stored, but --wait cannot say anybody enforces it.
		{"--wait with no replica connected fails", []string{"revoke", "--subject", "spiffe://example.org/agent/w", "--wait"}, 1,
			nil, "no replica is connected", "5", 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, append(slices.Clone(tt.args), conn...)...)
			if code != tt.code || !strings.Contains(errOut, tt.errOut) {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.code, out, errOut)
			}
			for _, want := range tt.out {
				if !strings.Contains(out, want) {
					t.Errorf("stdout lacks %q:\n%s", want, out)
				}
			}
			rs, v := p.Revocations(true)
			if v != tt.version || len(rs) != tt.stored {
				t.Fatalf("%d records at version %s, want %d at %s", len(rs), v, tt.stored, tt.version)
			}
		})
	}
	rs, _ := p.Revocations(true)
	for _, r := range rs {
		if r.GetReason() != "test" || !r.GetExpires().AsTime().After(time.Now().Add(59*time.Minute)) {
			t.Errorf("record %v", r)
		}
		if (r.GetValue() == "t-1" || r.GetValue() == "t-2") && !slices.Equal(r.GetIntents(), []string{"read"}) {
			t.Errorf("downgrade %v lacks its intents", r)
		}
	}
}

func TestParseRevokeValues(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
		err  string
	}{
		{"lines", "a\nb\n", []string{"a", "b"}, ""},
		{"comments and blanks", "# x\n\n a \r\n", []string{"a"}, ""},
		{"yaml list", "# x\n- a\n- b\n", []string{"a", "b"}, ""},
		{"flow list", "[a, b]", []string{"a", "b"}, ""},
		{"yaml list of maps", "- a: 1\n", nil, "list of strings"},
		{"empty yaml item", "- a\n- \"\"\n", nil, "item 2 is empty"},
		{"two values on a line", "a b\n", nil, "one value per line"},
		{"empty", "", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseRevokeValues("f", []byte(tt.in))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("= %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func FuzzParseRevokeValues(f *testing.F) {
	for _, s := range []string{"a\nb\n", "- a\n- b\n", "[a, b]", "# c\n", "- {a: 1}\n", "a b"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		vs, err := parseRevokeValues("fuzz", data)
		if err != nil {
			return
		}
		for _, v := range vs {
			if v == "" || v != strings.TrimSpace(v) {
				t.Fatalf("value %q", v)
			}
		}
	})
}
