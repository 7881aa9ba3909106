package mandate

import (
	"testing"
)

func TestScopeAllows(t *testing.T) {
	s := Scope{
		Destinations: []string{"spiffe://example.org/svc/tickets", "spiffe://example.org/svc/kb/*"},
		Hosts:        []string{"tickets.internal", "*.kb.internal"},
		Methods:      []string{"GET", "POST"},
		Paths:        []string{"/tickets/*/comments", "/kb/**"},
		GRPC:         []string{"tickets.v1.Tickets/Get", "kb.v1.Search/*"},
	}
	const dst = "spiffe://example.org/svc/tickets"
	tests := []struct {
		name                                       string
		dst, host, method, path, grpcSvc, grpcMeth string
		want                                       bool
	}{
		{"path in scope", dst, "tickets.internal", "GET", "/tickets/1/comments", "", "", true},
		{"host case-insensitive", dst, "Tickets.Internal", "GET", "/tickets/1/comments", "", "", true},
		{"wildcard host", "spiffe://example.org/svc/kb/a", "eu.kb.internal", "GET", "/kb/x/y", "", "", true},
		{"wildcard host needs a label", dst, "kb.internal", "GET", "/kb/x", "", "", false},
		{"wildcard host needs the dot", dst, "xkb.internal", "GET", "/kb/x", "", "", false},
		{"path out of scope", dst, "tickets.internal", "GET", "/tickets/1", "", "", false},
		{"path prefix trick", dst, "tickets.internal", "GET", "/kbx", "", "", false},
		{"empty path", dst, "tickets.internal", "GET", "", "", "", false},
		{"method out of scope", dst, "tickets.internal", "DELETE", "/tickets/1/comments", "", "", false},
		{"method case-sensitive", dst, "tickets.internal", "get", "/tickets/1/comments", "", "", false},
		{"destination out of scope", "spiffe://example.org/svc/billing", "tickets.internal", "GET", "/tickets/1/comments", "", "", false},
		{"unknown destination", "", "tickets.internal", "GET", "/tickets/1/comments", "", "", false},
		{"host out of scope", dst, "evil.internal", "GET", "/tickets/1/comments", "", "", false},
		{"grpc exact", dst, "tickets.internal", "POST", "/tickets.v1.Tickets/Get", "tickets.v1.Tickets", "Get", true},
		{"grpc other method", dst, "tickets.internal", "POST", "/tickets.v1.Tickets/Delete", "tickets.v1.Tickets", "Delete", false},
		{"grpc wildcard", dst, "tickets.internal", "POST", "/kb.v1.Search/Query", "kb.v1.Search", "Query", true},
		{"grpc wildcard needs a method", dst, "tickets.internal", "POST", "/kb.v1.Search/", "kb.v1.Search", "", false},
		{"grpc other service", dst, "tickets.internal", "POST", "/kb.v2.Search/Query", "kb.v2.Search", "Query", false},
	}
	compiled, err := compileScope(&s)
	if err != nil {
		t.Fatal(err)
	}
	withCompiled := s
	withCompiled.compiled = compiled
	for _, tt := range tests {
		for _, sc := range []Scope{s, withCompiled} {
			if got := sc.Allows(tt.dst, tt.host, tt.method, tt.path, tt.grpcSvc, tt.grpcMeth); got != tt.want {
				t.Errorf("%s (compiled %v): Allows = %v, want %v", tt.name, sc.compiled != nil, got, tt.want)
			}
		}
	}
}

func TestScopeEmptyDimensions(t *testing.T) {
	s := Scope{Paths: []string{"/a/**"}}
	if !s.Allows("spiffe://x.org/any", "any.host", "PATCH", "/a/b", "", "") {
		t.Fatal("empty destinations, hosts and methods must admit any")
	}
	g := Scope{GRPC: []string{"p.S/M"}}
	if g.Allows("", "", "POST", "/anything", "", "") {
		t.Fatal("a gRPC-only scope must not admit an arbitrary HTTP path")
	}
	if !g.Allows("", "", "POST", "/p.S/M", "p.S", "M") {
		t.Fatal("gRPC-only scope must admit its method")
	}
	if (Scope{}).Allows("", "", "GET", "/", "", "") {
		t.Fatal("empty scope must allow nothing")
	}
	if (Scope{Paths: []string{"no-slash"}}).Allows("", "", "GET", "no-slash", "", "") {
		t.Fatal("invalid scope must allow nothing")
	}
}

func TestScopeValidation(t *testing.T) {
	long := make([]string, maxScopeEntries+1)
	for i := range long {
		long[i] = "/a"
	}
	tests := []struct {
		name string
		s    Scope
		ok   bool
	}{
		{"paths only", Scope{Paths: []string{"/a"}}, true},
		{"grpc only", Scope{GRPC: []string{"a.b.C/*"}}, true},
		{"empty", Scope{}, false},
		{"hosts only", Scope{Hosts: []string{"a.b"}}, false},
		{"relative path", Scope{Paths: []string{"a/b"}}, false},
		{"bad path pattern", Scope{Paths: []string{"/a/**/b"}}, false},
		{"destination not spiffe", Scope{Paths: []string{"/a"}, Destinations: []string{"https://x"}}, false},
		{"uppercase host", Scope{Paths: []string{"/a"}, Hosts: []string{"A.b"}}, false},
		{"host with port", Scope{Paths: []string{"/a"}, Hosts: []string{"a.b:80"}}, false},
		{"bare wildcard host", Scope{Paths: []string{"/a"}, Hosts: []string{"*"}}, false},
		{"inner wildcard host", Scope{Paths: []string{"/a"}, Hosts: []string{"a.*.b"}}, false},
		{"lowercase method", Scope{Paths: []string{"/a"}, Methods: []string{"get"}}, false},
		{"wildcard method", Scope{Paths: []string{"/a"}, Methods: []string{"*"}}, false},
		{"grpc no method", Scope{GRPC: []string{"a.B"}}, false},
		{"grpc wildcard service", Scope{GRPC: []string{"*/M"}}, false},
		{"grpc glob method", Scope{GRPC: []string{"a.B/Get*"}}, false},
		{"grpc empty package part", Scope{GRPC: []string{"a..B/M"}}, false},
		{"too many entries", Scope{Paths: long}, false},
	}
	for _, tt := range tests {
		_, err := compileScope(&tt.s)
		if (err == nil) != tt.ok {
			t.Errorf("%s: err = %v, want ok=%v", tt.name, err, tt.ok)
		}
		if err != nil {
			wantReason(t, err, ReasonBadClaims)
		}
	}
}

func TestScopeWithin(t *testing.T) {
	parent := Scope{
		Destinations: []string{"spiffe://example.org/svc/**"},
		Hosts:        []string{"*.internal", "api.example.com"},
		Methods:      []string{"GET", "POST"},
		Paths:        []string{"/tickets/**"},
		GRPC:         []string{"tickets.v1.Tickets/*", "kb.v1.Search/Query"},
	}
	narrow := Scope{
		Destinations: []string{"spiffe://example.org/svc/tickets"},
		Hosts:        []string{"tickets.internal", "*.eu.internal"},
		Methods:      []string{"GET"},
		Paths:        []string{"/tickets/*/comments"},
		GRPC:         []string{"tickets.v1.Tickets/Get", "kb.v1.Search/Query"},
	}
	if err := narrow.Within(parent); err != nil {
		t.Fatalf("narrow scope: %v", err)
	}
	if err := parent.Within(parent); err != nil {
		t.Fatalf("scope within itself: %v", err)
	}
	widen := func(mod func(*Scope)) Scope {
		s := narrow
		mod(&s)
		return s
	}
	tests := []struct {
		name  string
		child Scope
	}{
		{"any destination", widen(func(s *Scope) { s.Destinations = nil })},
		{"other destination", widen(func(s *Scope) { s.Destinations = []string{"spiffe://example.org/agent/x"} })},
		{"any host", widen(func(s *Scope) { s.Hosts = nil })},
		{"other host", widen(func(s *Scope) { s.Hosts = []string{"evil.com"} })},
		{"wider wildcard host", widen(func(s *Scope) { s.Hosts = []string{"*.example.com"} })},
		{"any method", widen(func(s *Scope) { s.Methods = nil })},
		{"other method", widen(func(s *Scope) { s.Methods = []string{"DELETE"} })},
		{"wider path", widen(func(s *Scope) { s.Paths = []string{"/**"} })},
		{"sibling path", widen(func(s *Scope) { s.Paths = []string{"/admin/**"} })},
		{"grpc other method", widen(func(s *Scope) { s.GRPC = []string{"kb.v1.Search/Delete"} })},
		{"grpc wildcard under exact", widen(func(s *Scope) { s.GRPC = []string{"kb.v1.Search/*"} })},
	}
	for _, tt := range tests {
		wantReason(t, tt.child.Within(parent), ReasonOutOfScope)
	}
	// Dropping paths or gRPC entries narrows (empty admits nothing there).
	if err := (Scope{Paths: []string{"/tickets/1"}}).Within(Scope{Paths: []string{"/tickets/**"}, GRPC: []string{"a.B/*"}}); err != nil {
		t.Fatalf("dropping gRPC entries: %v", err)
	}
	// Under a parent with empty (= any) dimensions, anything narrower fits.
	if err := narrow.Within(Scope{Paths: []string{"/**"}, GRPC: []string{"tickets.v1.Tickets/*", "kb.v1.Search/*"}}); err != nil {
		t.Fatalf("under an open parent: %v", err)
	}
	wantReason(t, (Scope{}).Within(parent), ReasonBadClaims)
}

func TestScopeMCP(t *testing.T) {
	two := Scope{Paths: []string{"/mcp"}, MCP: &MCPScope{
		Methods: []string{"initialize", "tools/list", "tools/call"},
		Tools:   []string{"github.list_issues", "github.get_*"},
	}}
	tests := []struct {
		s                 Scope
		method, tool, uri string
		want              bool
	}{
		{two, "tools/call", "github.list_issues", "", true},
		{two, "tools/call", "github.get_file", "", true},
		{two, "tools/call", "github.create_pull_request", "", false},
		{two, "tools/call", "", "", false},
		{two, "initialize", "", "", true},
		{two, "prompts/get", "", "", false},
		{two, "resources/read", "", "file:///a", false},
		{Scope{Paths: []string{"/mcp"}}, "tools/call", "anything", "", true}, // no MCP limit
		{Scope{Paths: []string{"/mcp"}, MCP: &MCPScope{Resources: []string{"file:///docs/**"}}}, "resources/read", "", "file:///docs/a.md", true},
		{Scope{Paths: []string{"/mcp"}, MCP: &MCPScope{Resources: []string{"file:///docs/**"}}}, "resources/read", "", "file:///etc/passwd", false},
		{Scope{Paths: []string{"/mcp"}, MCP: &MCPScope{Resources: []string{"file:///docs/**"}}}, "tools/call", "x", "", false},
		{Scope{Paths: []string{"/mcp"}, MCP: &MCPScope{}}, "tools/list", "", "", false}, // invalid: allows nothing
	}
	for i, tt := range tests {
		if got := tt.s.AllowsMCP(tt.method, tt.tool, tt.uri); got != tt.want {
			t.Errorf("%d: AllowsMCP(%s, %s, %s) = %v, want %v", i, tt.method, tt.tool, tt.uri, got, tt.want)
		}
	}
}

func TestScopeWithinMCP(t *testing.T) {
	parent := Scope{Paths: []string{"/mcp"}, MCP: &MCPScope{Methods: []string{"tools/list", "tools/call"}, Tools: []string{"github.*"}}}
	tests := []struct {
		child Scope
		ok    bool
	}{
		{Scope{Paths: []string{"/mcp"}, MCP: &MCPScope{Methods: []string{"tools/call"}, Tools: []string{"github.list_*"}}}, true},
		{Scope{Paths: []string{"/mcp"}, MCP: &MCPScope{Methods: []string{"tools/call"}, Tools: []string{"github.list_issues", "github.get_file"}}}, true},
		{Scope{Paths: []string{"/mcp"}}, false},                                                                                     // drops the MCP limit
		{Scope{Paths: []string{"/mcp"}, MCP: &MCPScope{Tools: []string{"github.list_*"}}}, false},                                   // any method
		{Scope{Paths: []string{"/mcp"}, MCP: &MCPScope{Methods: []string{"prompts/get"}, Tools: []string{"github.x"}}}, false},      // other method
		{Scope{Paths: []string{"/mcp"}, MCP: &MCPScope{Methods: []string{"tools/call"}, Tools: []string{"slack.post"}}}, false},     // other tool
		{Scope{Paths: []string{"/mcp"}, MCP: &MCPScope{Methods: []string{"tools/call"}, Tools: []string{"*"}}}, false},              // wider glob
		{Scope{Paths: []string{"/mcp"}, MCP: &MCPScope{Methods: []string{"tools/call"}, Resources: []string{"file:///**"}}}, false}, // resources the parent never allowed
	}
	for i, tt := range tests {
		err := tt.child.Within(parent)
		if (err == nil) != tt.ok {
			t.Errorf("%d: Within = %v, want ok %v", i, err, tt.ok)
		}
	}
	// Without an MCP limit in the parent, any child MCP limit narrows.
	if err := (Scope{Paths: []string{"/mcp"}, MCP: &MCPScope{Tools: []string{"a"}}}).Within(Scope{Paths: []string{"/**"}}); err != nil {
		t.Fatal(err)
	}
}
