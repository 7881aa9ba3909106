package authz

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/mandate-dev/mandate/authz/mandate"
)

const mcpTestPolicies = `
apiVersion: mandate.dev/v1
kind: Policy
metadata: {name: coder-tools}
spec:
  rules:
    - name: session
      effect: allow
      subjects: ["spiffe://example.org/agent/coder"]
      labels: {protocol: mcp}
      actions: [{methods: [GET, DELETE], paths: ["/mcp"]}, {mcp: {methods: [initialize, notifications/initialized, tools/list]}}]
    - name: read
      effect: allow
      subjects: ["spiffe://example.org/agent/coder"]
      actions: [{mcp: {tools: ["github.list_*", "github.get_*"]}}]
    - name: pr
      effect: allow
      subjects: ["spiffe://example.org/agent/coder"]
      actions: [{mcp: {tools: [github.create_pull_request]}}]
    - name: pr-to-main
      effect: step_up
      subjects: ["spiffe://example.org/agent/coder"]
      actions: [{mcp: {tools: [github.create_pull_request]}}]
      when: 'mcp.arguments.base == "main" && has(mcp.arguments.repo)'
    - name: own-org
      effect: deny
      subjects: ["spiffe://example.org/agent/coder"]
      actions: [{mcp: {tools: ["github.*"]}}]
      when: '!has(mcp.arguments.owner) || mcp.arguments.owner != "acme"'
`

func mcpHarness(t testing.TB, mutate func(*Config)) *harness {
	h := newHarness(t, mutate)
	h.store.Update(func(s *State) { s.Policies = compile(t, mcpTestPolicies) })
	return h
}

// mcpReq is a POST /mcp on a route labelled protocol: mcp carrying body.
func mcpReq(body string, opts ...reqOpt) *authv3.CheckRequest {
	r := checkReq("POST", "/mcp", append([]reqOpt{principal("spiffe://example.org/agent/coder"), labels("protocol", "mcp"),
		hdr("content-type", "application/json")}, opts...)...)
	r.Attributes.Request.Http.Body = body
	return r
}

func toolCall(id, tool, args string) string {
	return `{"jsonrpc":"2.0","id":` + id + `,"method":"tools/call","params":{"name":"` + tool + `","arguments":` + args + `}}`
}

func withMetadata(t testing.TB, m map[string]any) reqOpt {
	s, err := structpb.NewStruct(m)
	if err != nil {
		t.Fatal(err)
	}
	return func(r *authv3.CheckRequest) {
		r.Attributes.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"envoy.filters.http.mcp": s}}
	}
}

// rpcResult is a decision on an MCP route, with its JSON-RPC error body.
type rpcResult struct {
	allowed bool
	status  int
	body    string
	ctype   string
	rpc     struct {
		JSONRPC string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Error   struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
			Data    struct {
				DecisionID string `json:"decision_id"`
				Reason     string `json:"reason"`
				Approval   string `json:"approval_request"`
			} `json:"data"`
		} `json:"error"`
	}
}

func (h *harness) checkMCP(t testing.TB, req *authv3.CheckRequest) rpcResult {
	t.Helper()
	resp, err := h.srv.Check(context.Background(), req)
	if err != nil {
		t.Fatalf("RPC error %v", err)
	}
	h.cache.Wait()
	var res rpcResult
	if codes.Code(resp.GetStatus().GetCode()) == codes.OK {
		res.allowed = true
		return res
	}
	d := resp.GetDeniedResponse()
	res.status, res.body = int(d.GetStatus().GetCode()), d.GetBody()
	for _, hv := range d.GetHeaders() {
		if hv.GetHeader().GetKey() == "content-type" {
			res.ctype = hv.GetHeader().GetValue()
		}
	}
	if err := json.Unmarshal([]byte(res.body), &res.rpc); err != nil {
		t.Fatalf("deny body %q is not JSON: %v", res.body, err)
	}
	if res.rpc.JSONRPC != "2.0" || res.rpc.Error.Data.DecisionID == "" || res.ctype != "application/json" {
		t.Fatalf("deny is not a JSON-RPC error response: %s (content-type %q)", res.body, res.ctype)
	}
	return res
}

func TestMCPDecisions(t *testing.T) {
	h := mcpHarness(t, nil)
	tests := []struct {
		name   string
		req    *authv3.CheckRequest
		status int // 0 = allowed
		reason string
		id     string
	}{
		{"read tool", mcpReq(toolCall("1", "github.list_issues", `{"owner":"acme","repo":"widgets"}`)), 0, "", ""},
		{"session: initialize", mcpReq(`{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}`), 0, "", ""},
		{"session: notification", mcpReq(`{"jsonrpc":"2.0","method":"notifications/initialized"}`), 0, "", ""},
		{"session: event stream", func() *authv3.CheckRequest { r := mcpReq(""); r.Attributes.Request.Http.Method = "GET"; return r }(), 0, "", ""},
		{"unlisted tool", mcpReq(toolCall(`"abc"`, "github.merge_pull_request", `{"owner":"acme"}`)), 403, "no_matching_rule", `"abc"`},
		{"other org", mcpReq(toolCall("2", "github.list_issues", `{"owner":"evil"}`)), 403, "denied_by_rule", "2"},
		{"pr to main needs step-up", mcpReq(toolCall("3", "github.create_pull_request", `{"owner":"acme","repo":"w","base":"main"}`)), 401, "step_up_required", "3"},
		{"pr elsewhere", mcpReq(toolCall("4", "github.create_pull_request", `{"owner":"acme","repo":"w","base":"dev"}`)), 0, "", ""},
		// Smuggling: each is refused before any policy runs.
		{"duplicate tool name", mcpReq(`{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"github.list_issues","name":"github.delete_repository","arguments":{"owner":"acme"}}}`), 403, "mcp_duplicate_key", "null"},
		{"duplicate argument", mcpReq(toolCall("5", "github.list_issues", `{"owner":"acme","owner":"evil"}`)), 403, "mcp_duplicate_key", "null"},
		{"case-folded duplicate", mcpReq(`{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"github.list_issues","Name":"github.delete_repository","arguments":{"owner":"acme"}}}`), 403, "mcp_duplicate_key", "null"},
		{"batch", mcpReq(`[` + toolCall("6", "github.list_issues", `{"owner":"acme"}`) + `]`), 403, "mcp_batch", "null"},
		{"header names another tool", mcpReq(toolCall("7", "github.list_issues", `{"owner":"acme"}`), hdr("mcp-name", "github.delete_repository")), 403, "mcp_mismatch", "null"},
		{"header names another method", mcpReq(toolCall("7", "github.list_issues", `{"owner":"acme"}`), hdr("mcp-method", "tools/list")), 403, "mcp_mismatch", "null"},
		{"filter metadata names another tool", mcpReq(toolCall("8", "github.list_issues", `{"owner":"acme"}`),
			withMetadata(t, map[string]any{"method": "tools/call", "params": map[string]any{"name": "github.delete_repository"}})), 403, "mcp_mismatch", "null"},
		{"partial body", mcpReq(toolCall("9", "github.list_issues", `{"owner":"acme"}`), hdr("x-envoy-auth-partial-body", "true")), 403, "mcp_partial_body", "null"},
		{"filter saw more than it parsed", mcpReq(toolCall("9", "github.list_issues", `{"owner":"acme"}`),
			withMetadata(t, map[string]any{"method": "tools/call", "is_exceeding_limit": true})), 403, "mcp_partial_body", "null"},
		{"no body", mcpReq(""), 403, "mcp_no_body", "null"},
		{"response posing as request", mcpReq(`{"jsonrpc":"2.0","id":1,"result":{}}`), 403, "mcp_not_request", "null"},
		{"trailing second request", mcpReq(toolCall("1", "github.list_issues", `{"owner":"acme"}`) + toolCall("2", "github.delete_repository", `{}`)), 403, "mcp_malformed", "null"},
		{"GET with a body", func() *authv3.CheckRequest {
			r := mcpReq(toolCall("1", "github.list_issues", `{"owner":"acme"}`))
			r.Attributes.Request.Http.Method = "GET"
			return r
		}(), 403, "mcp_not_request", "null"},
		{"body and raw_body both", func() *authv3.CheckRequest {
			r := mcpReq(toolCall("1", "github.list_issues", `{"owner":"acme"}`))
			r.Attributes.Request.Http.RawBody = []byte(toolCall("1", "github.delete_repository", `{"owner":"acme"}`))
			return r
		}(), 403, "mcp_mismatch", "null"},
		{"raw_body alone", func() *authv3.CheckRequest {
			r := mcpReq("")
			r.Attributes.Request.Http.RawBody = []byte(toolCall("11", "github.get_file", `{"owner":"acme"}`))
			return r
		}(), 0, "", ""},
		// raw_body is parsed in place (not copied): it decides as body does.
		{"raw_body: other org", func() *authv3.CheckRequest {
			r := mcpReq("")
			r.Attributes.Request.Http.RawBody = []byte(toolCall("12", "github.list_issues", `{"owner":"evil"}`))
			return r
		}(), 403, "denied_by_rule", "12"},
		{"raw_body: duplicate argument", func() *authv3.CheckRequest {
			r := mcpReq("")
			r.Attributes.Request.Http.RawBody = []byte(toolCall("13", "github.list_issues", `{"owner":"acme","owner":"evil"}`))
			return r
		}(), 403, "mcp_duplicate_key", "null"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := h.checkMCP(t, tt.req)
			if tt.status == 0 {
				if !res.allowed {
					t.Fatalf("denied: %s", res.body)
				}
				return
			}
			if res.allowed || res.status != tt.status || res.rpc.Error.Data.Reason != tt.reason || string(res.rpc.ID) != tt.id {
				t.Fatalf("got allowed=%v status %d body %s; want %d %s id %s", res.allowed, res.status, res.body, tt.status, tt.reason, tt.id)
			}
			if strings.Contains(res.body, "coder-tools") || strings.Contains(res.body, "own-org") || strings.Contains(res.body, "pr-to-main") {
				t.Fatalf("deny body names a policy: %s", res.body)
			}
		})
	}
}

func TestMCPBodyOnlyReadOnLabelledRoutes(t *testing.T) {
	h := mcpHarness(t, nil)
	// The same tool call on a route without the label: the body is not
	// read, so no MCP action matches, and the deny is the plain body.
	req := mcpReq(toolCall("1", "github.list_issues", `{"owner":"acme"}`), labels())
	res := h.check(t, req)
	if res.allowed || res.reason != "no_matching_rule" || strings.Contains(res.body, "jsonrpc") {
		t.Fatalf("unlabelled route: %+v", res)
	}
	if r := h.log.last(); r.MCPMethod != "" {
		t.Fatalf("unlabelled route logged MCP %q", r.MCPMethod)
	}
}

func TestMCPArgumentsInCacheKey(t *testing.T) {
	h := mcpHarness(t, nil)
	if res := h.checkMCP(t, mcpReq(toolCall("1", "github.list_issues", `{"owner":"acme","repo":"a"}`))); !res.allowed {
		t.Fatalf("acme denied: %s", res.body)
	}
	// The condition reads owner: another owner must not hit the entry.
	if res := h.checkMCP(t, mcpReq(toolCall("2", "github.list_issues", `{"owner":"evil","repo":"a"}`))); res.allowed {
		t.Fatal("a cached allow for owner acme was served for owner evil")
	}
	// No condition reads state: another state is the same decision.
	if res := h.checkMCP(t, mcpReq(toolCall("3", "github.list_issues", `{"owner":"acme","repo":"a","state":"open"}`))); !res.allowed {
		t.Fatalf("acme/a denied: %s", res.body)
	}
	if r := h.log.last(); !r.CacheHit || r.MCPTool != "github.list_issues" || r.MCPRequestID != "3" {
		t.Fatalf("expected a cache hit recorded with the MCP call: %+v", r)
	}
	// Another tool never hits an entry of this one.
	if res := h.checkMCP(t, mcpReq(toolCall("4", "github.delete_repository", `{"owner":"acme","repo":"a"}`))); res.allowed {
		t.Fatal("a cached allow of one tool was served for another")
	}
}

func TestMCPStepUpBoundToArguments(t *testing.T) {
	var pending []StepUpRequest
	h := mcpHarness(t, func(c *Config) {
		c.OnStepUp = func(r StepUpRequest) { pending = append(pending, r) }
		c.ClaimApproval = func(context.Context, string) error { return nil }
	})
	pr := mcpReq(toolCall("1", "github.create_pull_request", `{"owner":"acme","repo":"widgets","base":"main","title":"a"}`))
	res := h.checkMCP(t, pr)
	if res.status != 401 || res.rpc.Error.Data.Approval == "" || res.rpc.Error.Code != rpcCodeStepUp || len(pending) != 1 {
		t.Fatalf("step-up: %s pending %+v", res.body, pending)
	}
	p := pending[0]
	if p.MCP != "tools/call github.create_pull_request" || p.Arguments["repo"] != `"widgets"` || p.Arguments["base"] != `"main"` || len(p.Arguments) != 2 {
		t.Fatalf("step-up request %+v", p)
	}
	h.store.Update(func(s *State) {
		s.Approvals = NewApprovalSet([]Approval{{ID: p.ID, Subject: p.Subject, Task: p.Task, Method: p.Method, Path: p.Path,
			Policy: p.Policy, Rule: p.Rule, Expires: h.clock.Now().Add(time.Minute)}})
	})
	// Same repo and base, another title (not read by the condition).
	if res := h.checkMCP(t, mcpReq(toolCall("2", "github.create_pull_request", `{"owner":"acme","repo":"widgets","base":"main","title":"b"}`))); !res.allowed {
		t.Fatalf("approved pull request denied: %s", res.body)
	}
	// Another repo: the approval does not cover it.
	other := h.checkMCP(t, mcpReq(toolCall("3", "github.create_pull_request", `{"owner":"acme","repo":"secrets","base":"main","title":"a"}`)))
	if other.allowed || other.status != 401 || other.rpc.Error.Data.Approval == p.ID {
		t.Fatalf("approval for repo widgets covered repo secrets: %s", other.body)
	}
}

// TestMCPStepUpReportRecomputes: what a replica reports of an MCP step-up
// is all mandate-cp needs to recompute its id, long argument values
// included (shown cut, bound by their SHA-256), and two values that share
// their shown part still get different ids.
func TestMCPStepUpReportRecomputes(t *testing.T) {
	var pending []StepUpRequest
	h := mcpHarness(t, func(c *Config) {
		c.OnStepUp = func(r StepUpRequest) { pending = append(pending, r) }
	})
	long := strings.Repeat("w", 1500)
	for i, repo := range []string{"widgets", long + "-a", long + "-b"} {
		res := h.checkMCP(t, mcpReq(toolCall(fmt.Sprint(i), "github.create_pull_request",
			`{"owner":"acme","repo":"`+repo+`","base":"main"}`)))
		if res.status != 401 || len(pending) != i+1 {
			t.Fatalf("%d: step-up %s", i, res.body)
		}
	}
	for i, p := range pending {
		svc, m, _ := strings.Cut(p.GRPC, "/")
		got := ApprovalRequestID(StepUpContent{Subject: p.Subject, Task: p.Task, Method: p.Method, Path: p.Path,
			GRPCService: svc, GRPCMethod: m, Policy: p.Policy, Rule: p.Rule, MCP: p.MCP, MCPArguments: p.Arguments, Headers: p.Headers})
		if got != p.ID {
			t.Errorf("%d: id %s recomputed from the report as %s", i, p.ID, got)
		}
		if r := p.Arguments["repo"]; len(r) > 1100 {
			t.Errorf("%d: reported repo of %d bytes", i, len(r))
		}
	}
	if a, b := pending[1].Arguments["repo"], pending[2].Arguments["repo"]; !strings.Contains(a, "… [sha256:") || a == b || pending[1].ID == pending[2].ID {
		t.Errorf("long values sharing their shown part: %q / %q, ids %s %s", a[len(a)-80:], b[len(b)-80:], pending[1].ID, pending[2].ID)
	}
}

func TestMCPDecisionRecord(t *testing.T) {
	h := mcpHarness(t, nil)
	h.checkMCP(t, mcpReq(toolCall(`"r-1"`, "github.get_file", `{"owner":"acme","path":"a.go"}`)))
	r := h.log.last()
	if r.MCPMethod != "tools/call" || r.MCPTool != "github.get_file" || r.MCPRequestID != `"r-1"` || r.MCPArguments != `{"owner":"acme","path":"a.go"}` {
		t.Fatalf("record %+v", r)
	}
}

func TestMCPMandateLimitedToTwoTools(t *testing.T) {
	k := newMandateKit(t)
	var drift []OutOfIntent
	k.h.srv.cfg.OnOutOfIntent = func(o OutOfIntent) { drift = append(drift, o) }
	k.h.store.Update(func(s *State) { s.Policies = compile(t, mcpTestPolicies) })
	coder := "spiffe://example.org/agent/coder"
	token, _ := k.issue(t, coder, "T-9", "fix-bug", mandate.Scope{Paths: []string{"/mcp"}, MCP: &mandate.MCPScope{
		Methods: []string{"initialize", "tools/list", "tools/call"}, Tools: []string{"github.list_issues", "github.get_file"},
	}}, nil)
	for _, tool := range []string{"github.list_issues", "github.get_file"} {
		if res := k.h.checkMCP(t, mcpReq(toolCall("1", tool, `{"owner":"acme"}`), hdr("x-mandate", token))); !res.allowed {
			t.Fatalf("%s under the mandate denied: %s", tool, res.body)
		}
	}
	// The policy allows github.get_commit; the mandate does not.
	res := k.h.checkMCP(t, mcpReq(toolCall("2", "github.get_commit", `{"owner":"acme"}`), hdr("x-mandate", token)))
	if res.allowed || res.rpc.Error.Data.Reason != "mandate_out_of_scope" || string(res.rpc.ID) != "2" {
		t.Fatalf("third tool: %s", res.body)
	}
	if len(drift) != 1 || drift[0].Subject != coder || drift[0].Task != "T-9" {
		t.Fatalf("out-of-scope tool call not counted as drift: %+v", drift)
	}
	// Without the mandate the policy alone decides.
	if res := k.h.checkMCP(t, mcpReq(toolCall("3", "github.get_commit", `{"owner":"acme"}`))); !res.allowed {
		t.Fatalf("without a mandate: %s", res.body)
	}
}
