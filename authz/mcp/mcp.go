// Package mcp reads the JSON-RPC 2.0 request of a Model Context Protocol
// call from what Envoy sends to ext_authz: the request body (with_request_body),
// the dynamic metadata of Envoy's MCP filter and the Mcp-Method / Mcp-Name
// headers. It is strict where parsers are known to disagree: one request
// object (no batch, no response, no trailing data), jsonrpc exactly "2.0",
// no duplicate member names anywhere, valid UTF-8, bounded size and
// depth, no partial body. Every refusal carries a Reason that is safe to
// send to the client.
package mcp

import (
	"fmt"
	"math"
	"strings"
	"sync/atomic"
)

// Reason is a client-safe code for a refused MCP request.
type Reason string

// Reason codes.
const (
	ReasonMalformed    Reason = "mcp_malformed"     // not one well-formed JSON value
	ReasonBadUTF8      Reason = "mcp_bad_utf8"      // invalid UTF-8 or a lone surrogate escape
	ReasonDuplicateKey Reason = "mcp_duplicate_key" // an object names a member twice (ignoring case)
	ReasonTooDeep      Reason = "mcp_too_deep"      // nesting over Limits.MaxDepth
	ReasonTooLarge     Reason = "mcp_too_large"     // body over Limits.MaxBytes
	ReasonBatch        Reason = "mcp_batch"         // a JSON-RPC batch array
	ReasonNotRequest   Reason = "mcp_not_request"   // not a request object (a response, unknown members, no method)
	ReasonBadVersion   Reason = "mcp_bad_version"   // jsonrpc missing or not exactly "2.0"
	ReasonBadID        Reason = "mcp_bad_id"        // id not a string or integer, or missing on a request
	ReasonBadMethod    Reason = "mcp_bad_method"    // method not a short printable name
	ReasonBadParams    Reason = "mcp_bad_params"    // params not an object, or a method's required params missing or malformed
	ReasonPartialBody  Reason = "mcp_partial_body"  // Envoy sent part of the body only
	ReasonNoBody       Reason = "mcp_no_body"       // a POST without body
	ReasonMismatch     Reason = "mcp_mismatch"      // body, filter metadata and headers disagree
)

// Error is a refused MCP request.
type Error struct {
	Reason Reason
	// Offset is the byte offset in the body where the problem was seen
	// (0 when it is not about the body's syntax).
	Offset int
}

func (e *Error) Error() string {
	return fmt.Sprintf("mcp: %s at byte %d", e.Reason, e.Offset)
}

// Limits bound the work Parse does.
type Limits struct {
	// MaxBytes is the largest body accepted (default DefaultMaxBytes).
	MaxBytes int
	// MaxDepth is the deepest nesting accepted, the request object
	// counting as 1 (default DefaultMaxDepth).
	MaxDepth int
}

// Defaults of Limits.
const (
	DefaultMaxBytes = 1 << 20
	DefaultMaxDepth = 32
)

// Length limits of the names Parse extracts.
const (
	MaxMethodLen = 128
	MaxNameLen   = 128
	MaxURILen    = 4096
)

// MCP methods whose params name their target.
const (
	MethodToolsCall             = "tools/call"
	MethodPromptsGet            = "prompts/get"
	MethodResourcesRead         = "resources/read"
	MethodResourcesSubscribe    = "resources/subscribe"
	MethodResourcesUnsubscribe  = "resources/unsubscribe"
	notificationPrefix          = "notifications/"
	methodResourcesPrefix       = "resources/"
	methodResourcesListTemplate = "resources/templates/list"
)

// Request is a parsed MCP JSON-RPC request. Its strings point into the
// body where they were written without escapes.
type Request struct {
	// ID is the id member as written (a JSON string or integer), to be
	// echoed in an error response; "" for a notification.
	ID string
	// Method is the JSON-RPC method, e.g. "tools/call".
	Method string
	// Name is params.name of tools/call (the tool) and prompts/get (the
	// prompt); "" for other methods.
	Name string
	// URI is params.uri of resources/read, resources/subscribe and
	// resources/unsubscribe; "" for other methods.
	URI string
	// Arguments is params.arguments of tools/call and prompts/get as
	// written: a JSON object, validated. "" when absent.
	Arguments string

	// args locates the members of Arguments (ArgumentValues).
	args argIndex

	// shared is the slot of the memo entry that answered, nil for a
	// request parsed afresh.
	shared *Shared
}

// argIndex locates the members of a request's arguments object as the
// parser read them: the offsets in Arguments of the name and value of up
// to maxIndexed members whose names have no escapes. complete says it
// holds every member; otherwise ArgumentValues reads Arguments again.
type argIndex struct {
	complete bool
	n        uint8
	m        [maxIndexed]argSpan
}

// argSpan is a member: Arguments[name:nameEnd] is its name (without
// quotes), Arguments[val:valEnd] its value as written.
type argSpan struct{ name, nameEnd, val, valEnd uint32 }

const maxIndexed = 8

// add records a member whose name is body[name:nameEnd] (escaped: it has
// escapes) and value body[val:valEnd], for arguments starting at
// body[base].
func (ix *argIndex) add(base, name, nameEnd, val, valEnd int, escaped bool) {
	if escaped || int(ix.n) == len(ix.m) || uint64(valEnd-base) > math.MaxUint32 {
		ix.complete = false
		return
	}
	ix.m[ix.n] = argSpan{uint32(name - base), uint32(nameEnd - base), uint32(val - base), uint32(valEnd - base)}
	ix.n++
}

// ArgumentValues sets vals[i] to the raw JSON value of the member keys[i]
// of r.Arguments, leaving it alone when there is none: what
// MemberValues(r.Arguments, keys, vals) does, from the members the parse
// noted where it could (without reading the arguments again).
func (r *Request) ArgumentValues(keys, vals []string) {
	ix := &r.args
	if !ix.complete {
		MemberValues(r.Arguments, keys, vals)
		return
	}
	for i, key := range keys {
		for _, sp := range ix.m[:ix.n] {
			if r.Arguments[sp.name:sp.nameEnd] == key {
				vals[i] = r.Arguments[sp.val:sp.valEnd]
				break
			}
		}
	}
}

// Shared returns the slot shared by the requests a Memo answered from
// one remembered body (all of them have the same Method, Name, URI and
// Arguments, immutable), or nil when the request was parsed afresh.
func (r *Request) Shared() *Shared { return r.shared }

// Shared keeps what a caller derives from a remembered body's Method,
// Name, URI and Arguments (never from its ID), for the next requests the
// memo answers from that body. Safe for concurrent use.
type Shared struct{ v atomic.Value }

// Load returns what Store last stored, or nil.
func (s *Shared) Load() any { return s.v.Load() }

// Store keeps v; concurrent stores must store equivalent values.
func (s *Shared) Store(v any) { s.v.Store(v) }

// Tool returns the tool a tools/call names, else "".
func (r *Request) Tool() string {
	if r.Method == MethodToolsCall {
		return r.Name
	}
	return ""
}

// Target is what the Mcp-Name header carries for the request's method:
// params.name or params.uri ("" when the method names neither).
func (r *Request) Target() string {
	if r.URI != "" {
		return r.URI
	}
	return r.Name
}

// Parse reads body as one MCP JSON-RPC request. It never panics; every
// refusal is an *Error.
func Parse(body string, lim Limits) (Request, error) {
	r, _, err := parse(body, lim.withDefaults())
	return r, err
}

// withDefaults returns lim with its zero fields set to the defaults.
func (lim Limits) withDefaults() Limits {
	if lim.MaxBytes <= 0 {
		lim.MaxBytes = DefaultMaxBytes
	}
	if lim.MaxDepth <= 0 {
		lim.MaxDepth = DefaultMaxDepth
	}
	return lim
}

// parse is Parse with lim's defaults set; it also returns the offset in
// body of the id member's value (meaningful when Request.ID is set).
func parse(body string, lim Limits) (Request, int, error) {
	if len(body) > lim.MaxBytes {
		return Request{}, 0, &Error{Reason: ReasonTooLarge}
	}
	sc := scanner{s: body, maxDepth: lim.MaxDepth}
	sc.ws()
	if sc.i >= len(body) {
		return Request{}, 0, &Error{Reason: ReasonNoBody}
	}
	switch body[sc.i] {
	case '{':
	case '[':
		return Request{}, 0, sc.fail(ReasonBatch)
	default:
		if err := sc.value(0); err != nil {
			return Request{}, 0, err
		}
		return Request{}, 0, &Error{Reason: ReasonNotRequest}
	}
	if err := sc.members(1, memberTop); err != nil {
		return Request{}, 0, err
	}
	sc.ws()
	if sc.i != len(body) {
		return Request{}, 0, sc.fail(ReasonMalformed) // trailing data, e.g. a second object
	}
	r, err := sc.p.request()
	return r, sc.p.idAt, err
}

// field is a member value seen in the body.
type field struct {
	set   bool
	str   bool // a string (value holds it unescaped)
	value string
	raw   string // the value as written
}

// parsed collects the members Parse reads.
type parsed struct {
	jsonrpc, id, method, params, name, uri, args field
	argsAt                                       int      // offset of args' value
	argIx                                        argIndex // args' members
	idAt                                         int      // offset of id's value
}

// topMember scans a member of the request object.
func (sc *scanner) topMember(name string, depth int) error {
	p := &sc.p
	switch name {
	case "jsonrpc":
		return sc.field(&p.jsonrpc, depth)
	case "id":
		p.idAt = sc.i
		return sc.field(&p.id, depth)
	case "method":
		return sc.field(&p.method, depth)
	case "params":
		p.params.set = true
		if sc.s[sc.i] != '{' {
			return sc.fail(ReasonBadParams)
		}
		return sc.members(depth+1, memberParams)
	}
	// A response ("result", "error") posing as a request, or a member
	// JSON-RPC 2.0 does not define, which a server might read but
	// Mandate does not: refused.
	return sc.fail(ReasonNotRequest)
}

// paramsMember scans a member of params.
func (sc *scanner) paramsMember(name string, depth int) error {
	p := &sc.p
	switch name {
	case "name":
		return sc.field(&p.name, depth)
	case "uri":
		return sc.field(&p.uri, depth)
	case "arguments":
		if sc.s[sc.i] != '{' {
			return sc.field(&p.args, depth) // refused by request
		}
		// The members of arguments are noted in p.argIx as scanned.
		start := sc.i
		p.args.set, p.argsAt, p.argIx.complete = true, start, true
		if err := sc.members(depth+1, memberArgs); err != nil {
			return err
		}
		p.args.raw = sc.s[start:sc.i]
		return nil
	}
	return sc.value(depth)
}

// field scans a value and records it.
func (sc *scanner) field(f *field, depth int) error {
	start := sc.i
	f.set = true
	if sc.s[sc.i] == '"' {
		s, e, esc, err := sc.str()
		if err != nil {
			return err
		}
		f.str, f.value = true, sc.s[s:e]
		if esc {
			f.value = string(appendUnquoted(nil, f.value))
		}
	} else if err := sc.value(depth); err != nil {
		return err
	}
	f.raw = sc.s[start:sc.i]
	return nil
}

func (p *parsed) request() (Request, error) {
	if !p.jsonrpc.set || !p.jsonrpc.str || p.jsonrpc.value != "2.0" {
		return Request{}, &Error{Reason: ReasonBadVersion}
	}
	if !p.method.set {
		return Request{}, &Error{Reason: ReasonNotRequest}
	}
	if !p.method.str || !validMethod(p.method.value) {
		return Request{}, &Error{Reason: ReasonBadMethod}
	}
	r := Request{Method: p.method.value}
	notification := strings.HasPrefix(r.Method, notificationPrefix)
	switch {
	case p.id.set && notification, !p.id.set && !notification:
		// A notification gets no answer, so an error could not reach
		// the client; a request without id would run unanswered.
		return Request{}, &Error{Reason: ReasonBadID}
	case p.id.set:
		if !p.id.str && !isInteger(p.id.raw) {
			return Request{}, &Error{Reason: ReasonBadID}
		}
		r.ID = p.id.raw
	}
	if p.args.set && (p.args.raw == "" || p.args.raw[0] != '{') {
		return Request{}, &Error{Reason: ReasonBadParams}
	}
	switch r.Method {
	case MethodToolsCall, MethodPromptsGet:
		if !p.name.str || !validName(p.name.value) {
			return Request{}, &Error{Reason: ReasonBadParams}
		}
		r.Name, r.Arguments, r.args = p.name.value, p.args.raw, p.argIx
	case MethodResourcesRead, MethodResourcesSubscribe, MethodResourcesUnsubscribe:
		if !p.uri.str || !validURI(p.uri.value) {
			return Request{}, &Error{Reason: ReasonBadParams}
		}
		r.URI = p.uri.value
	}
	return r, nil
}

// isInteger reports whether a validated JSON number has no fraction or
// exponent (MCP ids are strings or integers).
func isInteger(n string) bool {
	return n != "" && n != "-" && !strings.ContainsAny(n, ".eE") && (n[0] == '-' || n[0] >= '0' && n[0] <= '9') && len(n) <= 20
}

func validMethod(m string) bool {
	if m == "" || len(m) > MaxMethodLen {
		return false
	}
	for i := 0; i < len(m); i++ {
		if m[i] <= ' ' || m[i] >= 0x7f {
			return false
		}
	}
	return true
}

// validName accepts tool and prompt names of 1-128 characters of
// [A-Za-z0-9_.:/-]: the characters MCP recommends, and nothing a glob
// or a log could misread.
func validName(n string) bool {
	if n == "" || len(n) > MaxNameLen {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-' || c == '/' || c == ':') {
			return false
		}
	}
	return true
}

// validURI accepts 1-4096 visible ASCII characters without backslash,
// without "." or ".." path segments and without percent-encoded dots,
// slashes or backslashes: a glob such as file:///repo/** must not be
// escaped by file:///repo/../etc/passwd, however the server resolves it.
func validURI(u string) bool {
	if u == "" || len(u) > MaxURILen {
		return false
	}
	for i := 0; i < len(u); i++ {
		c := u[i]
		if c <= ' ' || c >= 0x7f || c == '\\' {
			return false
		}
		if c == '%' && i+2 < len(u) {
			switch strings.ToLower(u[i+1 : i+3]) {
			case "2e", "2f", "5c":
				return false
			}
		}
	}
	rest := u
	if i := strings.IndexAny(rest, "?#"); i >= 0 {
		rest = rest[:i]
	}
	for seg := range strings.SplitSeq(rest, "/") {
		if seg == "." || seg == ".." {
			return false
		}
	}
	return true
}
