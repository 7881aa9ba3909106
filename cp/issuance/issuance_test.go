package issuance

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/authz/mandate"
)

const goodPolicy = `apiVersion: mandate.dev/v1
kind: IssuancePolicy
rules:
  - name: orch
    callers: ["spiffe://example.org/orchestrator"]
    subjects: ["spiffe://example.org/agent/*"]
    intents: ["triage", "summarize"]
    maxTTL: 10m
    scope:
      destinations: ["spiffe://example.org/svc/*"]
      methods: [GET, POST]
      paths: ["/tickets/**"]
  - name: any-intent
    callers: ["spiffe://example.org/admin-bot"]
    subjects: ["spiffe://example.org/agent/**"]
    intents: ["*"]
    maxTTL: 1m
    scope:
      paths: ["/**"]
`

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, doc, want string
	}{
		{"unknown field", strings.Replace(goodPolicy, "maxTTL: 1m", "maxTTL: 1m\n    extra: 1", 1), "unknown field"},
		{"duplicate key", strings.Replace(goodPolicy, "maxTTL: 1m", "maxTTL: 1m\n    maxTTL: 2m", 1), "already set"},
		{"bad apiVersion", strings.Replace(goodPolicy, "mandate.dev/v1", "v2", 1), "apiVersion"},
		{"bad kind", strings.Replace(goodPolicy, "IssuancePolicy", "Policy", 1), "kind"},
		{"caller not spiffe", strings.Replace(goodPolicy, `"spiffe://example.org/orchestrator"`, `"orchestrator"`, 1), "not a SPIFFE ID pattern"},
		{"no subjects", strings.Replace(goodPolicy, `subjects: ["spiffe://example.org/agent/*"]`, `subjects: []`, 1), "subjects"},
		{"no intents", strings.Replace(goodPolicy, `intents: ["triage", "summarize"]`, `intents: []`, 1), "intents"},
		{"bad intent", strings.Replace(goodPolicy, `"triage"`, `"tri age"`, 1), "not allowed"},
		{"no ttl", strings.Replace(goodPolicy, "    maxTTL: 10m\n", "", 1), "maxTTL is required"},
		{"bad ttl", strings.Replace(goodPolicy, "maxTTL: 10m", "maxTTL: soon", 1), "maxTTL"},
		{"tiny ttl", strings.Replace(goodPolicy, "maxTTL: 10m", "maxTTL: 1ms", 1), "under one second"},
		{"empty action scope", strings.Replace(goodPolicy, `      paths: ["/**"]`, `      methods: [GET]`, 1), "scope"},
		{"dup rule", strings.Replace(goodPolicy, "name: any-intent", "name: orch", 1), "used twice"},
		{"not yaml", "{{{", "issuance"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(tt.doc))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Parse error = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestAuthorize(t *testing.T) {
	p, err := Parse("p.yaml", []byte(goodPolicy))
	if err != nil {
		t.Fatal(err)
	}
	in := mandate.Scope{Destinations: []string{"spiffe://example.org/svc/tickets"}, Methods: []string{"GET"}, Paths: []string{"/tickets/*"}}
	tests := []struct {
		name     string
		req      Request
		wantRule string
		wantTTL  time.Duration
		wantErr  string
	}{
		{"ok capped", Request{Caller: "spiffe://example.org/orchestrator", Subject: "spiffe://example.org/agent/a", Intent: "triage", Scope: in, TTL: time.Hour}, "orch", 10 * time.Minute, ""},
		{"ok requested", Request{Caller: "spiffe://example.org/orchestrator", Subject: "spiffe://example.org/agent/a", Intent: "triage", Scope: in, TTL: time.Minute}, "orch", time.Minute, ""},
		{"ok default ttl", Request{Caller: "spiffe://example.org/orchestrator", Subject: "spiffe://example.org/agent/a", Intent: "summarize", Scope: in}, "orch", 10 * time.Minute, ""},
		{"unknown caller", Request{Caller: "spiffe://example.org/mallory", Subject: "spiffe://example.org/agent/a", Intent: "triage", Scope: in}, "", 0, "may not request"},
		{"subject outside", Request{Caller: "spiffe://example.org/orchestrator", Subject: "spiffe://example.org/agent/a/b", Intent: "triage", Scope: in}, "", 0, "subject not allowed"},
		{"intent outside", Request{Caller: "spiffe://example.org/orchestrator", Subject: "spiffe://example.org/agent/a", Intent: "delete", Scope: in}, "", 0, "intent not allowed"},
		{"scope wider", Request{Caller: "spiffe://example.org/orchestrator", Subject: "spiffe://example.org/agent/a", Intent: "triage",
			Scope: mandate.Scope{Destinations: []string{"spiffe://example.org/svc/tickets"}, Methods: []string{"DELETE"}, Paths: []string{"/tickets/*"}}}, "", 0, "scope"},
		{"scope any destination", Request{Caller: "spiffe://example.org/orchestrator", Subject: "spiffe://example.org/agent/a", Intent: "triage",
			Scope: mandate.Scope{Methods: []string{"GET"}, Paths: []string{"/tickets/*"}}}, "", 0, "scope"},
		{"wildcard intent", Request{Caller: "spiffe://example.org/admin-bot", Subject: "spiffe://example.org/agent/x/y", Intent: "anything", Scope: mandate.Scope{Paths: []string{"/a"}}}, "any-intent", time.Minute, ""},
		{"negative ttl", Request{Caller: "spiffe://example.org/admin-bot", Subject: "spiffe://example.org/agent/x", Intent: "a", Scope: mandate.Scope{Paths: []string{"/a"}}, TTL: -1}, "", 0, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := p.Authorize(tt.req)
			if tt.wantErr != "" {
				var ie *Error
				if err == nil || !errors.As(err, &ie) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Authorize = %+v, %v; want error containing %q", g, err, tt.wantErr)
				}
				return
			}
			if err != nil || g.Rule != tt.wantRule || g.TTL != tt.wantTTL {
				t.Fatalf("Authorize = %+v, %v; want rule %s ttl %v", g, err, tt.wantRule, tt.wantTTL)
			}
		})
	}
	if !p.MayIssueFor("spiffe://example.org/orchestrator", "spiffe://example.org/agent/a") || p.MayIssueFor("spiffe://example.org/orchestrator", "spiffe://example.org/svc/a") {
		t.Fatal("MayIssueFor wrong")
	}
	var nilPolicy *Policy
	if _, err := nilPolicy.Authorize(Request{Caller: "spiffe://example.org/orchestrator"}); err == nil {
		t.Fatal("nil policy admitted a request")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(goodPolicy))
	f.Add([]byte("apiVersion: mandate.dev/v1\nkind: IssuancePolicy\nrules: []\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("fuzz.yaml", data)
		if err != nil {
			return
		}
		// A parsed policy must answer without panicking and be default-deny
		// for a caller no pattern can match.
		if _, err := p.Authorize(Request{Caller: "not-a-spiffe-id", Subject: "spiffe://x/y", Intent: "i", Scope: mandate.Scope{Paths: []string{"/"}}}); err == nil {
			t.Fatal("policy admitted a non-SPIFFE caller")
		}
	})
}

func TestAuthorizeMCPCeiling(t *testing.T) {
	p, err := Parse("p.yaml", []byte(`apiVersion: mandate.dev/v1
kind: IssuancePolicy
rules:
  - name: coder
    callers: ["spiffe://example.org/orchestrator"]
    subjects: ["spiffe://example.org/agent/coder/*"]
    intents: ["*"]
    maxTTL: 10m
    scope:
      paths: ["/mcp"]
      mcp: {methods: [initialize, tools/list, tools/call], tools: ["github.list_*", "github.get_*"]}
`))
	if err != nil {
		t.Fatal(err)
	}
	req := func(m *mandate.MCPScope) Request {
		return Request{Caller: "spiffe://example.org/orchestrator", Subject: "spiffe://example.org/agent/coder/c1", Intent: "fix",
			Scope: mandate.Scope{Paths: []string{"/mcp"}, MCP: m}}
	}
	if _, err := p.Authorize(req(&mandate.MCPScope{Methods: []string{"tools/call"}, Tools: []string{"github.list_issues", "github.get_file"}})); err != nil {
		t.Fatalf("two read tools: %v", err)
	}
	for _, m := range []*mandate.MCPScope{
		nil, // every tool
		{Methods: []string{"tools/call"}, Tools: []string{"github.delete_repository"}},
		{Methods: []string{"tools/call"}, Tools: []string{"github.*"}},
		{Tools: []string{"github.list_issues"}}, // any method
	} {
		if _, err := p.Authorize(req(m)); err == nil {
			t.Errorf("scope %+v above the MCP ceiling was granted", m)
		}
	}
}
