package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mandate-dev/mandate/internal/envoyreq"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// Binaries built once by TestMain.
var binCP, binAuthz string

func TestMain(m *testing.M) {
	if addr := os.Getenv(revokerEnv); addr != "" {
		if err := runRevoker(context.Background(), addr, os.Getenv(storeWriteEnv), os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "revoker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "mandate-cp-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binCP, binAuthz = filepath.Join(dir, "mandate-cp"), filepath.Join(dir, "mandate-authz")
	for bin, pkg := range map[string]string{binCP: ".", binAuthz: "../mandate-authz"} {
		out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "go build %s: %v\n%s", pkg, err, out)
			_ = os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

type tb interface {
	Helper()
	Fatal(...any)
	Fatalf(string, ...any)
	TempDir() string
	Cleanup(func())
	Logf(string, ...any)
}

// proc is a started binary with the addresses it wrote.
type proc struct {
	cmd   *exec.Cmd
	addrs map[string]string
	log   string
	// addrFile and bin: where the address file goes, and what runs.
	addrFile, bin string
	done          chan struct{}
	err           error
}

func start(t tb, bin string, args ...string) *proc {
	t.Helper()
	return startEnv(t, nil, bin, args...)
}

// startNoWait starts bin without waiting for its address file (written
// once the process serves).
func startNoWait(t tb, bin string, args ...string) *proc {
	t.Helper()
	return startNoWaitEnv(t, nil, bin, args...)
}

// startEnv is start with env ("KEY=value") added to the process's
// environment.
func startEnv(t tb, env []string, bin string, args ...string) *proc {
	t.Helper()
	p := startNoWaitEnv(t, env, bin, args...)
	p.waitAddrs(t, 20*time.Second)
	return p
}

func startNoWaitEnv(t tb, env []string, bin string, args ...string) *proc {
	t.Helper()
	dir := t.TempDir()
	af := filepath.Join(dir, "addrs.json")
	logf := filepath.Join(dir, "log")
	f, err := os.Create(logf)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append(args, "--addr-file", af)...)
	cmd.Stdout, cmd.Stderr = f, f
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, log: logf, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); _ = f.Close(); close(p.done) }()
	t.Cleanup(func() { p.kill() })
	p.addrFile, p.bin = af, bin
	return p
}

// waitAddrs waits until the process wrote its address file.
func (p *proc) waitAddrs(t tb, timeout time.Duration) {
	t.Helper()
	if !p.tryAddrs(t, timeout) {
		t.Fatalf("%s wrote no address file within %v", filepath.Base(p.bin), timeout)
	}
}

// tryAddrs reports whether the address file appears within timeout.
func (p *proc) tryAddrs(t tb, timeout time.Duration) bool {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if b, err := os.ReadFile(p.addrFile); err == nil && json.Unmarshal(b, &p.addrs) == nil {
			return true
		}
		select {
		case <-p.done:
			b, _ := os.ReadFile(p.log)
			t.Fatalf("%s exited: %v\n%s", filepath.Base(p.bin), p.err, b)
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

func (p *proc) kill() {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop(t tb) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			b, _ := os.ReadFile(p.log)
			t.Fatalf("exit after SIGTERM: %v\n%s", p.err, b)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no exit 15s after SIGTERM")
	}
}

func startCP(t tb, dataDir, xdsAddr, adminAddr string) *proc {
	return start(t, binCP, "--data-dir", dataDir, "--plaintext", "--xds-listen", xdsAddr,
		"--admin-listen", adminAddr, "--metrics-addr", "127.0.0.1:0", "--log-level", "warn")
}

func startAuthz(t tb, xdsAddr, node string) *proc {
	return startAuthzEnv(t, nil, xdsAddr, node)
}

func startAuthzEnv(t tb, env []string, xdsAddr, node string) *proc {
	return startEnv(t, env, binAuthz, "--xds-server", xdsAddr, "--plaintext", "--listen", "127.0.0.1:0",
		"--metrics-addr", "127.0.0.1:0", "--node-id", node, "--stale-budget", "30s", "--decision-log", "off",
		"--log-level", "warn")
}

func dial(t tb, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

func adminClient(t tb, p *proc) mandatev1.AdminClient {
	return mandatev1.NewAdminClient(dial(t, p.addrs["admin"]))
}

type checker struct{ c authv3.AuthorizationClient }

func newChecker(t tb, p *proc) checker {
	return checker{authv3.NewAuthorizationClient(dial(t, p.addrs["grpc"]))}
}

// allowed sends one Check for GET /reports/x by subject.
func (c checker) allowed(ctx context.Context, subject string) (bool, error) {
	return c.check(ctx, checkRequest(subject))
}

// checkRequest is the CheckRequest of GET /reports/x by subject.
func checkRequest(subject string) *authv3.CheckRequest {
	return envoyreq.Build(envoyreq.Params{Principal: subject, Method: "GET", Path: "/reports/x", Host: "reports", Time: time.Now()})
}

// check sends req and reports whether it was allowed.
func (c checker) check(ctx context.Context, req *authv3.CheckRequest) (bool, error) {
	resp, err := c.c.Check(ctx, req)
	if err != nil {
		return false, err
	}
	return codes.Code(resp.GetStatus().GetCode()) == codes.OK, nil
}

func ready(p *proc) int {
	resp, err := http.Get("http://" + p.addrs["metrics"] + "/readyz")
	if err != nil {
		return 0
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

func waitFor(t tb, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

const reportsPolicy = `apiVersion: mandate.dev/v1
kind: Policy
metadata:
  name: reports
spec:
  rules:
    - name: agents-read-reports
      effect: allow
      subjects: ["spiffe://example.org/agent/*"]
      actions:
        - methods: [GET]
          paths: ["/reports/*"]
`

func applyReports(ctx context.Context, t tb, c mandatev1.AdminClient) string {
	t.Helper()
	resp, err := c.ApplyPolicies(ctx, &mandatev1.ApplyPoliciesRequest{Policies: []*mandatev1.Policy{
		{Name: "reports", Source: []byte(reportsPolicy), SourceFile: "reports.yaml"}}})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetVersion()
}

func logOf(p *proc) string {
	b, _ := os.ReadFile(p.log)
	return strings.TrimSpace(string(b))
}
