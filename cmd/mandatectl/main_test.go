package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/mandate-dev/mandate/authz"
	"github.com/mandate-dev/mandate/authz/identity"
	"github.com/mandate-dev/mandate/policies"
)

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestValidateAndTest(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("apiVersion: mandate.dev/v1\nkind: Policy\nmetadata: {name: x}\nspec:\n  rules:\n    - {name: r, effect: allow, subjects: [\"spiffe://example.org/a\"], when: \"amout > 5\"}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	failing := t.TempDir()
	for name, body := range map[string]string{
		"p.yaml":      "apiVersion: mandate.dev/v1\nkind: Policy\nmetadata: {name: p}\nspec:\n  rules:\n    - {name: r, effect: allow, subjects: [\"spiffe://example.org/a\"]}\n",
		"p_test.yaml": "apiVersion: mandate.dev/v1\nkind: PolicyTest\nmetadata: {name: t}\ncases:\n  - name: wrong expectation\n    request: {subject: spiffe://example.org/a, method: GET, path: /}\n    expect: {effect: deny}\n",
	} {
		if err := os.WriteFile(filepath.Join(failing, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name    string
		args    []string
		code    int
		outWant string
	}{
		{"validate examples", []string{"validate", "../../policies/examples"}, 0, "ok "},
		{"validate bad file", []string{"validate", bad}, 1, "undeclared reference to 'amout'"},
		{"test examples", []string{"test", "../../policies/examples"}, 0, " 0 failed"},
		{"failing test case", []string{"test", failing}, 1, "FAIL"},
		{"unknown command", []string{"nope"}, 2, "unknown command"},
		{"no args", nil, 2, "Usage:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, tt.args...)
			if code != tt.code || !strings.Contains(out+errOut, tt.outWant) {
				t.Fatalf("exit %d (want %d), output:\n%s%s\nwant it to contain %q", code, tt.code, out, errOut, tt.outWant)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	set, err := policies.LoadDir("../../policies/examples")
	if err != nil {
		t.Fatal(err)
	}
	store := authz.NewStateStore(nil)
	store.Update(func(s *authz.State) { s.Policies = set })
	res, err := identity.New(identity.Config{TrustDomains: []spiffeid.TrustDomain{spiffeid.RequireTrustDomainFromString("example.org")}})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := authz.NewServer(authz.Config{Identity: res, State: store})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	authv3.RegisterAuthorizationServer(gs, srv)
	go func() { _ = gs.Serve(lis) }()
	defer gs.Stop()

	base := []string{"check", "--plaintext", "--addr", lis.Addr().String(),
		"--principal", "spiffe://example.org/agent/infra/a1", "--destination", "spiffe://example.org/svc/config",
		"--host", "config.internal"}
	if code, out, errOut := runCLI(t, append(base, "--path", "/config/app.yaml")...); code != 0 || !strings.HasPrefix(out, "ALLOW") {
		t.Fatalf("allow: exit %d %s%s", code, out, errOut)
	}
	if code, out, _ := runCLI(t, append(base, "--path", "/secrets;jsessionid=x/db-password")...); code != exitDenied || !strings.Contains(out, "path_parameter") {
		t.Fatalf("deny: exit %d %s", code, out)
	}
	coder := []string{"check", "--plaintext", "--addr", lis.Addr().String(), "--principal", "spiffe://example.org/agent/coder/c1"}
	if code, out, errOut := runCLI(t, append(coder, "--mcp-tool", "github.list_issues", "--mcp-arguments", `{"owner":"acme"}`)...); code != 0 || !strings.HasPrefix(out, "ALLOW") {
		t.Fatalf("MCP allow: exit %d %s%s", code, out, errOut)
	}
	if code, out, _ := runCLI(t, append(coder, "--mcp-tool", "github.delete_repository", "--mcp-arguments", `{"owner":"acme"}`)...); code != exitDenied ||
		!strings.Contains(out, `"jsonrpc":"2.0","id":1,"error"`) || !strings.Contains(out, "denied_by_rule") {
		t.Fatalf("MCP deny: exit %d %s", code, out)
	}
	dup := `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"github.list_issues","name":"github.delete_repository","arguments":{"owner":"acme"}}}`
	if code, out, _ := runCLI(t, append(coder, "--method", "POST", "--path", "/mcp", "--context", "protocol=mcp", "--body", dup)...); code != exitDenied ||
		!strings.Contains(out, "mcp_duplicate_key") {
		t.Fatalf("MCP duplicate key: exit %d %s", code, out)
	}
	// --json is protojson, as grpcurl prints it: okResponse, not OkResponse.
	if code, out, errOut := runCLI(t, append(base, "--path", "/tickets/T-1", "--json")...); code != 0 ||
		!strings.Contains(out, `"okResponse"`) || !strings.Contains(out, `"x-mandate-decision-id"`) || strings.Contains(out, "OkResponse") {
		t.Fatalf("--json: exit %d %s%s", code, out, errOut)
	}
	if code, _, errOut := runCLI(t, "check", "--plaintext", "--addr", "10.1.2.3:9191"); code != 1 || !strings.Contains(errOut, "loopback") {
		t.Fatalf("plaintext off loopback: exit %d %s", code, errOut)
	}
}
