package policies

import (
	"slices"
	"strings"
	"testing"
)

const mcpPolicies = `apiVersion: mandate.dev/v1
kind: Policy
metadata: {name: mcp}
spec:
  rules:
    - name: read-tools
      effect: allow
      subjects: ["spiffe://example.org/agent/*"]
      actions: [{mcp: {tools: ["github.list_*", "github.get_*"]}}]
    - name: session
      effect: allow
      subjects: ["spiffe://example.org/agent/*"]
      actions: [{mcp: {methods: [initialize, tools/list, notifications/initialized]}}]
    - name: docs
      effect: allow
      subjects: ["spiffe://example.org/agent/*"]
      actions: [{mcp: {methods: [resources/read], resources: ["file:///docs/**"]}}]
    - name: pr
      effect: step_up
      subjects: ["spiffe://example.org/agent/*"]
      actions: [{mcp: {tools: [github.create_pull_request]}}]
    - name: pr-allowed
      effect: allow
      subjects: ["spiffe://example.org/agent/*"]
      actions: [{mcp: {tools: [github.create_pull_request]}}]
      when: 'mcp.arguments.owner == "acme"'
    - name: no-delete
      effect: deny
      subjects: ["spiffe://example.org/**"]
      actions: [{mcp: {tools: ["github.delete_*"]}}]
    - name: own-org
      effect: deny
      subjects: ["spiffe://example.org/**"]
      actions: [{mcp: {tools: ["github.*"]}}]
      when: 'has(mcp.arguments.owner) && mcp.arguments.owner != "acme"'
`

func TestMCPActions(t *testing.T) {
	s := mustSet(t, mcpPolicies)
	agent := "spiffe://example.org/agent/coder"
	call := func(method, tool, uri, args string) *Request {
		return &Request{Subject: agent, Method: "POST", Path: "/mcp",
			MCP: &MCPCall{Method: method, Tool: tool, ResourceURI: uri, Arguments: args}}
	}
	tests := []struct {
		name string
		r    *Request
		want Effect
		rule string
	}{
		{"read tool", call("tools/call", "github.list_issues", "", `{"owner":"acme"}`), EffectAllow, "read-tools"},
		{"read tool, no arguments", call("tools/call", "github.get_file", "", ""), EffectAllow, "read-tools"},
		{"read tool, other org", call("tools/call", "github.list_issues", "", `{"owner":"evil"}`), EffectDeny, "own-org"},
		{"unlisted tool", call("tools/call", "github.merge", "", ""), EffectDeny, ""},
		{"tool glob does not cross dots wrongly", call("tools/call", "gitlab.list_issues", "", ""), EffectDeny, ""},
		{"delete never", call("tools/call", "github.delete_repository", "", `{"owner":"acme"}`), EffectDeny, "no-delete"},
		{"pr needs step-up", call("tools/call", "github.create_pull_request", "", `{"owner":"acme","title":"x"}`), EffectStepUp, "pr"},
		{"session", call("initialize", "", "", ""), EffectAllow, "session"},
		{"tools/list", call("tools/list", "", "", ""), EffectAllow, "session"},
		{"prompts not allowed", call("prompts/get", "", "", ""), EffectDeny, ""},
		{"resource in glob", call("resources/read", "", "file:///docs/a/b.md", ""), EffectAllow, "docs"},
		{"resource outside glob", call("resources/read", "", "file:///etc/passwd", ""), EffectDeny, ""},
		{"not MCP", &Request{Subject: agent, Method: "POST", Path: "/mcp"}, EffectDeny, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := s.Evaluate(tt.r)
			if d.Effect != tt.want || d.Rule != tt.rule {
				t.Fatalf("got %s by %q (%s), want %s by %q", d.Effect, d.Rule, d.Reason, tt.want, tt.rule)
			}
		})
	}
	if d := s.Evaluate(call("tools/call", "github.create_pull_request", "", `{"owner":"acme"}`)); !d.AllowedIfApproved ||
		d.AllArguments || len(d.ArgumentKeys) != 0 {
		t.Fatalf("pr step-up: %+v", d)
	}
	if d := s.Evaluate(call("tools/call", "github.list_issues", "", `{"owner":"evil"}`)); !slices.Equal(d.ArgumentKeys, []string{"owner"}) {
		t.Fatalf("own-org deny read %v", d.ArgumentKeys)
	}
	if got := s.MCPArgumentKeys(); !slices.Equal(got, []string{"owner"}) || s.ReadsAllMCPArguments() {
		t.Fatalf("MCPArgumentKeys = %v, all %v", got, s.ReadsAllMCPArguments())
	}
}

func TestMCPArgumentValues(t *testing.T) {
	args := `{"s":"x\u00e9","i":3,"f":1.5,"big":1e400,"b":true,"n":null,"l":[1,"a",{"k":"v"}],"o":{"p":{"q":2}}}`
	tests := []struct {
		when string
		want bool
	}{
		{`mcp.arguments.s == "xé"`, true},
		{`mcp.arguments.i == 3 && mcp.arguments.i > 2.5`, true},
		{`mcp.arguments.f == 1.5`, true},
		{`mcp.arguments.b == true`, true},
		{`mcp.arguments.n == null`, true},
		{`mcp.arguments.l.size() == 3 && mcp.arguments.l[2].k == "v"`, true},
		{`mcp.arguments.o.p.q == 2`, true},
		{`"s" in mcp.arguments && !("zz" in mcp.arguments)`, true},
		{`has(mcp.arguments.o) && !has(mcp.arguments.zz)`, true},
		{`mcp.arguments.size() == 8`, true},
		{`mcp.arguments.exists(k, k == "o")`, true},
		{`has(mcp.arguments.big)`, false}, // an out-of-range number is an error, has() included
		{`mcp.arguments.big == 1.0`, false},
		{`mcp.arguments.o.p.zz == 2`, false}, // missing: an error
		{`!has(mcp.arguments.o.p.zz) && has(mcp.arguments.o.p.q)`, true},
		{`mcp.method == "tools/call" && mcp.tool == "t" && mcp.resource_uri == ""`, true},
	}
	for _, tt := range tests {
		t.Run(tt.when, func(t *testing.T) {
			s := mustSet(t, `apiVersion: mandate.dev/v1
kind: Policy
metadata: {name: p}
spec:
  rules:
    - name: r
      effect: allow
      subjects: ["spiffe://example.org/a"]
      when: '`+strings.ReplaceAll(tt.when, "'", "''")+`'
`)
			d := s.Evaluate(&Request{Subject: "spiffe://example.org/a", MCP: &MCPCall{Method: "tools/call", Tool: "t", Arguments: args}})
			if (d.Effect == EffectAllow) != tt.want {
				t.Fatalf("effect %s (%s)", d.Effect, d.Reason)
			}
		})
	}
	// A missing argument is an error (fails closed), not a zero value;
	// outside MCP the arguments are an empty map.
	s := mustSet(t, `apiVersion: mandate.dev/v1
kind: Policy
metadata: {name: p}
spec:
  rules:
    - name: r
      effect: deny
      subjects: ["spiffe://example.org/a"]
      when: 'mcp.arguments.owner != "acme"'
`)
	if d := s.Evaluate(&Request{Subject: "spiffe://example.org/a", MCP: &MCPCall{Method: "tools/call", Tool: "t", Arguments: `{"x":1}`}}); d.Reason != ReasonConditionError {
		t.Fatalf("missing argument: %+v", d)
	}
	if d := s.Evaluate(&Request{Subject: "spiffe://example.org/a"}); d.Reason != ReasonConditionError {
		t.Fatalf("not MCP: %+v", d)
	}
}

func TestMCPArgumentAnalysis(t *testing.T) {
	tests := []struct {
		when string
		keys []string
		all  bool
	}{
		{`mcp.arguments.owner == "a"`, []string{"owner"}, false},
		{`mcp.arguments["repo"] == "a" && has(mcp.arguments.owner)`, []string{"owner", "repo"}, false},
		{`"x" in mcp.arguments`, []string{"x"}, false},
		{`mcp.arguments.o.p == 1`, []string{"o"}, false},
		{`mcp.arguments.size() > 0`, nil, true},
		{`mcp.arguments.exists(k, k == "a")`, nil, true},
		{`mcp.tool == "a"`, nil, false},
	}
	env, err := newCELEnv()
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		c, err := compileCondition(env, tt.when)
		if err != nil {
			t.Fatalf("%s: %v", tt.when, err)
		}
		if !slices.Equal(c.argKeys, tt.keys) || c.allArgs != tt.all {
			t.Fatalf("%s: keys %v all %v, want %v %v", tt.when, c.argKeys, c.allArgs, tt.keys, tt.all)
		}
	}
}

func TestMCPActionValidation(t *testing.T) {
	tests := []struct{ action, want string }{
		{`{mcp: {}}`, "needs methods, tools or resources"},
		{`{mcp: {tools: [a], resources: ["x:/**"]}}`, "never match the same request"},
		{`{mcp: {methods: [tools/list], tools: [a]}}`, "tools match tools/call only"},
		{`{mcp: {methods: [tools/call], resources: ["x:/a"]}}`, "resources match"},
		{`{mcp: {tools: ["a b"]}}`, "must be 1-128 characters"},
		{`{mcp: {methods: ["tools call"]}}`, "JSON-RPC method"},
		{`{methods: [POST], mcp: {tools: [a]}}`, "one only"},
		{`{mcp: {resources: ["x:/**/a"]}}`, "last segment"},
	}
	for _, tt := range tests {
		_, err := Parse("t.yaml", []byte(`apiVersion: mandate.dev/v1
kind: Policy
metadata: {name: p}
spec:
  rules:
    - name: r
      effect: allow
      subjects: ["spiffe://example.org/a"]
      actions: [`+tt.action+`]
`))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want %q", tt.action, err, tt.want)
		}
	}
}
