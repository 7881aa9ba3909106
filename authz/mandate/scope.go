package mandate

import (
	"strings"

	"github.com/mandate-dev/mandate/policies/pattern"
)

const (
	maxScopeEntries = 64
	maxPatternLen   = 2048
)

// Scope is what a mandate lets its holder do. Each list constrains one
// dimension of a request:
//
//   - Destinations: SPIFFE ID patterns (policies/pattern syntax) the
//     destination workload must match. Empty = any destination.
//   - Hosts: lowercase host names, exact or "*.suffix" (one or more labels
//     before the suffix). Empty = any host.
//   - Methods: HTTP methods, exact and case-sensitive ("GET"). Empty = any.
//   - Paths: URL path patterns (policies/pattern syntax, leading '/').
//   - GRPC: "package.Service/Method" or "package.Service/*".
//
// Paths and GRPC together form the action dimension: a request is in scope
// when its path matches a Paths pattern, or it is a gRPC call whose service
// and method match a GRPC entry. An empty Paths list therefore admits no
// path (it does not mean "any path"), and a scope must name at least one
// path or gRPC method.
//
// MCP, when set, further limits MCP requests (on routes labelled
// protocol: mcp); see MCPScope. Without it a mandate limits MCP requests
// only by their HTTP path.
//
// Scope values returned by Verifier.Verify carry a compiled form; a Scope
// built by hand is compiled on each Allows call.
type Scope struct {
	Destinations []string  `json:"destinations,omitempty"`
	Hosts        []string  `json:"hosts,omitempty"`
	Methods      []string  `json:"methods,omitempty"`
	Paths        []string  `json:"paths,omitempty"`
	GRPC         []string  `json:"grpc,omitempty"`
	MCP          *MCPScope `json:"mcp,omitempty"`

	compiled *compiledScope
}

// Clone returns a deep copy of s, without its compiled form.
func (s Scope) Clone() Scope {
	c := Scope{Destinations: cloneStrings(s.Destinations), Hosts: cloneStrings(s.Hosts), Methods: cloneStrings(s.Methods),
		Paths: cloneStrings(s.Paths), GRPC: cloneStrings(s.GRPC)}
	if s.MCP != nil {
		c.MCP = &MCPScope{Methods: cloneStrings(s.MCP.Methods), Tools: cloneStrings(s.MCP.Tools), Resources: cloneStrings(s.MCP.Resources)}
	}
	return c
}

// MCPScope lists the MCP requests a mandate admits:
//
//   - Methods: JSON-RPC methods ("initialize", "tools/list",
//     "tools/call"); empty = any method.
//   - Tools: tool-name globs (policies/pattern syntax); a tools/call must
//     name a tool matching one. Empty admits no tool call.
//   - Resources: resource URI globs; a resources/read, subscribe or
//     unsubscribe must name a URI matching one. Empty admits none.
type MCPScope struct {
	Methods   []string `json:"methods,omitempty"`
	Tools     []string `json:"tools,omitempty"`
	Resources []string `json:"resources,omitempty"`
}

type compiledScope struct {
	destinations []pattern.Pattern
	hosts        []string
	methods      []string
	paths        []pattern.Pattern
	grpc         []grpcEntry
	mcp          *compiledMCP
}

type compiledMCP struct {
	methods   []string
	tools     []pattern.Pattern
	resources []pattern.Pattern
}

type grpcEntry struct {
	service string
	method  string // "*" = every method of service
}

// compileScope validates s and returns its compiled form.
func compileScope(s *Scope) (*compiledScope, error) {
	if len(s.Paths) == 0 && len(s.GRPC) == 0 {
		return nil, errorf(ReasonBadClaims, "scope: names no paths and no gRPC methods")
	}
	for _, l := range [][]string{s.Destinations, s.Hosts, s.Methods, s.Paths, s.GRPC} {
		if len(l) > maxScopeEntries {
			return nil, errorf(ReasonBadClaims, "scope: more than %d entries in a list", maxScopeEntries)
		}
	}
	cs := &compiledScope{hosts: s.Hosts, methods: s.Methods}
	var err error
	if cs.destinations, err = compilePatterns("destination", "spiffe://", s.Destinations); err != nil {
		return nil, err
	}
	if cs.paths, err = compilePatterns("path", "/", s.Paths); err != nil {
		return nil, err
	}
	for _, h := range s.Hosts {
		if !validHost(h) {
			return nil, errorf(ReasonBadClaims, "scope: bad host %q", h)
		}
	}
	for _, m := range s.Methods {
		if !validMethod(m) {
			return nil, errorf(ReasonBadClaims, "scope: bad method %q", m)
		}
	}
	for _, g := range s.GRPC {
		e, ok := parseGRPC(g)
		if !ok {
			return nil, errorf(ReasonBadClaims, "scope: bad gRPC entry %q", g)
		}
		cs.grpc = append(cs.grpc, e)
	}
	if s.MCP != nil {
		if cs.mcp, err = compileMCP(s.MCP); err != nil {
			return nil, err
		}
	}
	return cs, nil
}

func compileMCP(m *MCPScope) (*compiledMCP, error) {
	for _, l := range [][]string{m.Methods, m.Tools, m.Resources} {
		if len(l) > maxScopeEntries {
			return nil, errorf(ReasonBadClaims, "scope: more than %d entries in an mcp list", maxScopeEntries)
		}
	}
	if len(m.Methods) == 0 && len(m.Tools) == 0 && len(m.Resources) == 0 {
		return nil, errorf(ReasonBadClaims, "scope: mcp names no methods, tools or resources")
	}
	out := &compiledMCP{methods: m.Methods}
	for _, meth := range m.Methods {
		if !validMCPName(meth, false) {
			return nil, errorf(ReasonBadClaims, "scope: bad mcp method %q", meth)
		}
	}
	for _, t := range m.Tools {
		if !validMCPName(t, true) {
			return nil, errorf(ReasonBadClaims, "scope: bad mcp tool glob %q", t)
		}
		p, err := pattern.Compile(t)
		if err != nil {
			return nil, errorf(ReasonBadClaims, "scope: mcp tool: %w", err)
		}
		out.tools = append(out.tools, p)
	}
	for _, r := range m.Resources {
		if r == "" || len(r) > maxPatternLen || strings.ContainsAny(r, " \t\r\n\\") {
			return nil, errorf(ReasonBadClaims, "scope: bad mcp resource glob %q", r)
		}
		p, err := pattern.Compile(r)
		if err != nil {
			return nil, errorf(ReasonBadClaims, "scope: mcp resource: %w", err)
		}
		out.resources = append(out.resources, p)
	}
	return out, nil
}

// validMCPName accepts 1-128 characters of [A-Za-z0-9_.:/-], and '*'
// when glob.
func validMCPName(s string, glob bool) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("_.:/-", c) >= 0 || glob && c == '*') {
			return false
		}
	}
	return true
}

// mcpResourceMethods name a resource URI.
var mcpResourceMethods = []string{"resources/read", "resources/subscribe", "resources/unsubscribe"}

// AllowsMCP reports whether an MCP request (method, the tool of a
// tools/call, the URI of a resources/* request) is inside the scope. A
// scope without MCP allows every MCP request its paths allow; an
// invalid scope allows nothing.
func (s Scope) AllowsMCP(method, tool, resourceURI string) bool {
	cs := s.compiled
	if cs == nil {
		var err error
		if cs, err = compileScope(&s); err != nil {
			return false
		}
	}
	m := cs.mcp
	if m == nil {
		return true
	}
	if len(m.methods) > 0 && !contains(m.methods, method) {
		return false
	}
	switch {
	case method == "tools/call":
		return tool != "" && anyMatch(m.tools, tool)
	case contains(mcpResourceMethods, method):
		return resourceURI != "" && anyMatch(m.resources, resourceURI)
	}
	return true
}

func compilePatterns(field, prefix string, in []string) ([]pattern.Pattern, error) {
	out := make([]pattern.Pattern, 0, len(in))
	for _, s := range in {
		if len(s) > maxPatternLen || !strings.HasPrefix(s, prefix) {
			return nil, errorf(ReasonBadClaims, "scope: %s %q must start with %q and be at most %d bytes", field, s, prefix, maxPatternLen)
		}
		p, err := pattern.Compile(s)
		if err != nil {
			return nil, errorf(ReasonBadClaims, "scope: %s: %w", field, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// validHost accepts lowercase DNS names of [a-z0-9-] labels, optionally
// starting with "*." (a wildcard for one or more labels).
func validHost(h string) bool {
	h = strings.TrimPrefix(h, "*.")
	if h == "" || len(h) > 253 {
		return false
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			b := label[i]
			if !(b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '-') {
				return false
			}
		}
	}
	return true
}

func validMethod(m string) bool {
	if m == "" || len(m) > 16 {
		return false
	}
	for i := 0; i < len(m); i++ {
		if m[i] < 'A' || m[i] > 'Z' {
			return false
		}
	}
	return true
}

func parseGRPC(g string) (grpcEntry, bool) {
	svc, method, ok := strings.Cut(g, "/")
	if !ok || len(g) > 512 {
		return grpcEntry{}, false
	}
	for part := range strings.SplitSeq(svc, ".") {
		if !validIdent(part) {
			return grpcEntry{}, false
		}
	}
	if method != "*" && !validIdent(method) {
		return grpcEntry{}, false
	}
	return grpcEntry{service: svc, method: method}, true
}

func validIdent(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b == '_' || i > 0 && b >= '0' && b <= '9') {
			return false
		}
	}
	return true
}

// Allows reports whether a request is inside the scope. destination is the
// destination workload's SPIFFE ID ("" if unknown), host the request's
// host as authz/attrs.Host normalized it (lowercase, no port), method the HTTP method, path
// the URL path without query, and grpcService/grpcMethod the gRPC call ("" if
// the request is not gRPC). An invalid scope allows nothing.
func (s Scope) Allows(destination, host, method, path, grpcService, grpcMethod string) bool {
	cs := s.compiled
	if cs == nil {
		var err error
		if cs, err = compileScope(&s); err != nil {
			return false
		}
	}
	if len(cs.destinations) > 0 && !anyMatch(cs.destinations, destination) {
		return false
	}
	if len(cs.hosts) > 0 && !hostAllowed(cs.hosts, host) {
		return false
	}
	if len(cs.methods) > 0 && !contains(cs.methods, method) {
		return false
	}
	if path != "" && anyMatch(cs.paths, path) {
		return true
	}
	if grpcService == "" || grpcMethod == "" {
		return false
	}
	for _, e := range cs.grpc {
		if e.service == grpcService && (e.method == "*" || e.method == grpcMethod) {
			return true
		}
	}
	return false
}

func anyMatch(ps []pattern.Pattern, name string) bool {
	for _, p := range ps {
		if p.Match(name) {
			return true
		}
	}
	return false
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func hostAllowed(hosts []string, h string) bool {
	for _, p := range hosts {
		if hostMatch(p, h) {
			return true
		}
	}
	return false
}

// hostMatch matches a host pattern against a host, ignoring ASCII case in
// the host.
func hostMatch(p, h string) bool {
	if suffix, ok := strings.CutPrefix(p, "*."); ok {
		// h must be "<one or more labels>.suffix".
		n := len(h) - len(suffix)
		return n >= 2 && h[n-1] == '.' && strings.EqualFold(h[n:], suffix)
	}
	return strings.EqualFold(p, h)
}

// hostCovers reports whether every host child matches, parent matches.
func hostCovers(parent, child string) bool {
	ps, pWild := strings.CutPrefix(parent, "*.")
	cs, cWild := strings.CutPrefix(child, "*.")
	switch {
	case !pWild:
		return !cWild && parent == child
	case !cWild:
		return hostMatch(parent, child)
	default:
		return cs == ps || strings.HasSuffix(cs, "."+ps)
	}
}

// Within checks that child (a delegated scope) grants nothing parent does
// not. Every child pattern must be covered by some parent pattern of the
// same dimension. For destinations, hosts and methods an empty list means
// "any", so an empty child list under a non-empty parent list is a widening.
// For paths and gRPC methods an empty list admits nothing, so only the
// entries present are checked. Errors carry ReasonOutOfScope (or
// ReasonBadClaims when either scope is invalid).
func (child Scope) Within(parent Scope) error {
	pc, err := compileScope(&parent)
	if err != nil {
		return errorf(ReasonBadClaims, "parent scope: %w", err)
	}
	cc, err := compileScope(&child)
	if err != nil {
		return err
	}
	if len(pc.destinations) > 0 {
		if len(cc.destinations) == 0 {
			return errorf(ReasonOutOfScope, "child allows any destination, parent only %v", parent.Destinations)
		}
		for i, c := range cc.destinations {
			if !coveredBy(pc.destinations, c) {
				return errorf(ReasonOutOfScope, "destination %q not within the parent's", child.Destinations[i])
			}
		}
	}
	if len(pc.hosts) > 0 {
		if len(cc.hosts) == 0 {
			return errorf(ReasonOutOfScope, "child allows any host, parent only %v", parent.Hosts)
		}
		for _, c := range cc.hosts {
			ok := false
			for _, p := range pc.hosts {
				ok = ok || hostCovers(p, c)
			}
			if !ok {
				return errorf(ReasonOutOfScope, "host %q not within the parent's", c)
			}
		}
	}
	if len(pc.methods) > 0 {
		if len(cc.methods) == 0 {
			return errorf(ReasonOutOfScope, "child allows any method, parent only %v", parent.Methods)
		}
		for _, c := range cc.methods {
			if !contains(pc.methods, c) {
				return errorf(ReasonOutOfScope, "method %q not within the parent's", c)
			}
		}
	}
	for i, c := range cc.paths {
		if !coveredBy(pc.paths, c) {
			return errorf(ReasonOutOfScope, "path %q not within the parent's", child.Paths[i])
		}
	}
	for i, c := range cc.grpc {
		ok := false
		for _, p := range pc.grpc {
			ok = ok || (p.service == c.service && (p.method == "*" || p.method == c.method))
		}
		if !ok {
			return errorf(ReasonOutOfScope, "gRPC %q not within the parent's", child.GRPC[i])
		}
	}
	return mcpWithin(pc.mcp, cc.mcp, parent.MCP, child.MCP)
}

// mcpWithin checks the MCP part of Within: without a parent limit
// anything narrows; with one, the child needs its own (none would admit
// every tool), its methods a subset (any, when the parent lists none),
// and each tool and resource glob covered by a parent glob.
func mcpWithin(pc, cc *compiledMCP, parent, child *MCPScope) error {
	if pc == nil {
		return nil
	}
	if cc == nil {
		return errorf(ReasonOutOfScope, "child allows any MCP request, parent only %+v", *parent)
	}
	if len(pc.methods) > 0 {
		if len(cc.methods) == 0 {
			return errorf(ReasonOutOfScope, "child allows any MCP method, parent only %v", parent.Methods)
		}
		for _, m := range cc.methods {
			if !contains(pc.methods, m) {
				return errorf(ReasonOutOfScope, "MCP method %q not within the parent's", m)
			}
		}
	}
	for i, c := range cc.tools {
		if !coveredBy(pc.tools, c) {
			return errorf(ReasonOutOfScope, "MCP tool %q not within the parent's", child.Tools[i])
		}
	}
	for i, c := range cc.resources {
		if !coveredBy(pc.resources, c) {
			return errorf(ReasonOutOfScope, "MCP resource %q not within the parent's", child.Resources[i])
		}
	}
	return nil
}

func coveredBy(parents []pattern.Pattern, c pattern.Pattern) bool {
	for _, p := range parents {
		if pattern.Covers(p, c) {
			return true
		}
	}
	return false
}
