package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/mandate-dev/mandate/e2e/internal/proc"
)

// idCoder is the coding agent of the coding-agent example policies; the
// test binary itself holds its SVID and runs the MCP client.
const idCoder = "spiffe://example.org/agent/coder/c1"

// mcpRoutes: /mcp is an MCP route sending the whole body with the check
// (as mcp-sidecar.yaml configures Envoy), everything else plain.
const mcpRoutes = `[
 {"prefix":"/mcp","context_extensions":{"protocol":"mcp","resource":"github-mcp","sensitivity":"high"},
  "with_request_body":{"max_request_bytes":65536,"pack_as_bytes":true}},
 {"prefix":"/","context_extensions":{"app":"echo"}}]`

// headerTransport adds headers to every request (the agent's mandate).
type headerTransport struct {
	base http.RoundTripper
	hdr  map[string]string
}

func (h headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, v := range h.hdr {
		r.Header.Set(k, v)
	}
	return h.base.RoundTrip(r)
}

// rpcError returns the JSON-RPC error an MCP call failed with, and the
// error.data Mandate put in it.
func rpcError(t *testing.T, err error) (*jsonrpc.Error, map[string]string) {
	t.Helper()
	var werr *jsonrpc.Error
	if !errors.As(err, &werr) {
		t.Fatalf("error %v (%T) is not a JSON-RPC error", err, err)
	}
	data := map[string]string{}
	if err := json.Unmarshal(werr.Data, &data); err != nil {
		t.Fatalf("error.data %s: %v", werr.Data, err)
	}
	return werr, data
}

// TestMCP runs the official Go MCP SDK's client (as the coding agent, with
// its SVID) against its server (behind the front proxy, which sends the
// body to ext_authz as Envoy's with_request_body does), under the
// coding-agent example policies.
func TestMCP(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	d := deploy(ctx, t, options{selfID: idCoder, policies: "../policies/examples", routes: mcpRoutes})

	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(d.env.SocketAddr())))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if err := proc.Poll(ctx, 100*time.Millisecond, func(context.Context) error {
		sv, err := src.GetX509SVID()
		if err != nil || sv.ID.String() != idCoder {
			return fmt.Errorf("SVID %v (%v)", sv, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(src, src,
		tlsconfig.AuthorizeMemberOf(spiffeid.RequireTrustDomainFromString("example.org")))}
	defer tr.CloseIdleConnections()
	endpoint := "https://" + d.proxyTLS + "/mcp"
	connect := func(t *testing.T, hdr map[string]string) *mcp.ClientSession {
		t.Helper()
		hc := &http.Client{Transport: headerTransport{base: tr, hdr: hdr}, Timeout: 30 * time.Second}
		c := mcp.NewClient(&mcp.Implementation{Name: "coder", Version: "1.0.0"}, nil)
		cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: endpoint, HTTPClient: hc, MaxRetries: -1}, nil)
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		t.Cleanup(func() { _ = cs.Close() })
		return cs
	}
	call := func(cs *mcp.ClientSession, tool string, args map[string]any) (string, error) {
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: tool, Arguments: args})
		if err != nil {
			return "", err
		}
		var b strings.Builder
		for _, c := range res.Content {
			if tc, ok := c.(*mcp.TextContent); ok {
				b.WriteString(tc.Text)
			}
		}
		return b.String(), nil
	}

	t.Run("allowed tool works", func(t *testing.T) {
		cs := connect(t, nil)
		out, err := call(cs, "github.list_issues", map[string]any{"owner": "acme", "repo": "widgets"})
		if err != nil || !strings.Contains(out, "github.list_issues called with") {
			t.Fatalf("list_issues: %q, %v", out, err)
		}
	})

	t.Run("denied tool is a JSON-RPC error", func(t *testing.T) {
		cs := connect(t, nil)
		_, err := call(cs, "github.delete_repository", map[string]any{"owner": "acme", "repo": "widgets"})
		werr, data := rpcError(t, err)
		if werr.Code != -32001 || data["reason"] != "denied_by_rule" || data["decision_id"] == "" {
			t.Fatalf("error %+v data %v", werr, data)
		}
		if strings.Contains(string(werr.Data)+werr.Message, "coding-agent") || strings.Contains(string(werr.Data), "never-delete") {
			t.Fatalf("the error names a policy: %s", werr.Data)
		}
		// Another organisation: the argument condition.
		_, err = call(cs, "github.list_issues", map[string]any{"owner": "evil-corp"})
		if _, data := rpcError(t, err); data["reason"] != "denied_by_rule" {
			t.Fatalf("other organisation: %v", data)
		}
	})

	t.Run("argument-based step-up, approved, then allowed once", func(t *testing.T) {
		cs := connect(t, nil)
		pr := map[string]any{"owner": "acme", "repo": "widgets", "base": "main", "head": "fix", "title": "Fix"}
		_, err := call(cs, "github.create_pull_request", pr)
		werr, data := rpcError(t, err)
		if werr.Code != -32002 || data["reason"] != "step_up_required" || !strings.HasPrefix(data["approval_request"], "ar-") {
			t.Fatalf("step-up: %+v %v", werr, data)
		}
		// The replica reports the pending request to mandate-cp in the
		// background: wait for it to be listed.
		var list ctlOut
		if err := proc.Poll(ctx, 100*time.Millisecond, func(context.Context) error {
			list = d.mustCtl(ctx, "operator", "approvals")
			if !strings.Contains(list.stdout, data["approval_request"]) {
				return errors.New("not listed yet")
			}
			return nil
		}); err != nil {
			t.Fatalf("approval request %s never listed: %v\n%s", data["approval_request"], err, list.stdout)
		}
		if !strings.Contains(list.stdout, "mcp tools/call github.create_") || !strings.Contains(list.stdout, `repo = "widgets"`) {
			t.Fatalf("approvals do not show the tool and the bound arguments:\n%s", list.stdout)
		}
		d.mustCtl(ctx, "operator", "approve", data["approval_request"], "--for", "2m", "--wait")
		out, err := call(cs, "github.create_pull_request", pr)
		if err != nil || !strings.Contains(out, "github.create_pull_request called") {
			t.Fatalf("approved pull request: %q, %v", out, err)
		}
		// One use (approve's default, claimed from mandate-cp): the same
		// call again needs a new approval.
		_, err = call(cs, "github.create_pull_request", pr)
		if _, again := rpcError(t, err); again["reason"] != "step_up_required" || again["approval_request"] != data["approval_request"] {
			t.Fatalf("a one-use approval allowed a second call: %v", again)
		}
		// The approval is bound to repo and base: another repo asks again.
		other := map[string]any{"owner": "acme", "repo": "secrets", "base": "main", "head": "fix", "title": "Fix"}
		_, err = call(cs, "github.create_pull_request", other)
		if _, data2 := rpcError(t, err); data2["reason"] != "step_up_required" || data2["approval_request"] == data["approval_request"] {
			t.Fatalf("approval for widgets covered secrets: %v", data2)
		}
	})

	t.Run("mandate limited to two tools", func(t *testing.T) {
		tok, _ := d.issue(ctx, idCoder, d.uniq("T-mcp"), "fix-bug", "--paths", "/mcp",
			"--mcp-methods", "initialize,notifications/initialized,tools/list,tools/call",
			"--mcp-tools", "github.list_issues,github.get_file", "--ttl", "5m")
		cs := connect(t, map[string]string{"x-mandate": tok})
		for _, tool := range []string{"github.list_issues", "github.get_file"} {
			if _, err := call(cs, tool, map[string]any{"owner": "acme"}); err != nil {
				t.Fatalf("%s under the mandate: %v", tool, err)
			}
		}
		// The policy allows github.get_commit; the mandate does not.
		_, err := call(cs, "github.get_commit", map[string]any{"owner": "acme"})
		if _, data := rpcError(t, err); data["reason"] != "mandate_out_of_scope" {
			t.Fatalf("third tool: %v", data)
		}
	})

	t.Run("smuggling is denied and never reaches the server", func(t *testing.T) {
		hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
		tests := []struct {
			name, body string
			hdr        map[string]string
			status     int
			reason     string
		}{
			{"duplicate tool name", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"github.list_issues","name":"github.delete_repository","arguments":{"owner":"acme","x":"smuggle-1"}}}`, nil, 403, "mcp_duplicate_key"},
			{"case-folded duplicate", `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"github.list_issues","NAME":"github.delete_repository","arguments":{"owner":"acme","x":"smuggle-2"}}}`, nil, 403, "mcp_duplicate_key"},
			{"duplicate argument", `{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"github.list_issues","arguments":{"owner":"acme","owner":"evil-corp","x":"smuggle-3"}}}`, nil, 403, "mcp_duplicate_key"},
			{"batch", `[{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"github.delete_repository","arguments":{"owner":"acme","x":"smuggle-4"}}}]`, nil, 403, "mcp_batch"},
			{"header names another tool", `{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"github.list_issues","arguments":{"owner":"acme","x":"smuggle-5"}}}`,
				map[string]string{"Mcp-Method": "tools/call", "Mcp-Name": "github.delete_repository"}, 403, "mcp_mismatch"},
			{"partial body", `{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"github.list_issues","arguments":{"owner":"acme","x":"smuggle-6"}}}`,
				map[string]string{"X-Envoy-Auth-Partial-Body": "true"}, 403, "mcp_partial_body"},
			{"body over the limit", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"github.list_issues","arguments":{"owner":"acme","x":"smuggle-7","pad":"` + strings.Repeat("a", 70000) + `"}}}`, nil, 413, ""},
		}
		for _, tt := range tests {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Accept", "application/json, text/event-stream")
			for k, v := range tt.hdr {
				req.Header.Set(k, v)
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Errorf("%s: status %d, want %d (%s)", tt.name, resp.StatusCode, tt.status, body)
				continue
			}
			if tt.reason == "" {
				continue
			}
			var rpc struct {
				ID    json.RawMessage `json:"id"`
				Error struct {
					Data map[string]string `json:"data"`
				} `json:"error"`
			}
			if err := json.Unmarshal(body, &rpc); err != nil || rpc.Error.Data["reason"] != tt.reason || resp.Header.Get("Content-Type") != "application/json" {
				t.Errorf("%s: body %s (%v), want reason %s", tt.name, body, err, tt.reason)
			}
		}
		resp, err := http.Get("http://" + d.echo + "/_seen")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var seen []struct {
			RequestURI string `json:"request_uri"`
			Body       string `json:"body"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&seen); err != nil {
			t.Fatal(err)
		}
		calls := 0
		for _, s := range seen {
			if strings.Contains(s.Body, "smuggle-") {
				t.Errorf("the MCP server saw a smuggled request: %s", s.Body)
			}
			if s.RequestURI == "/mcp" && strings.Contains(s.Body, "tools/call") {
				calls++
			}
		}
		if calls == 0 {
			t.Error("the MCP server saw no tool call at all: the check above proves nothing")
		}
	})
}
