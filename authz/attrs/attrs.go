// Package attrs is the one place where a decision's inputs are read from
// an Envoy CheckRequest: identity (principal, peer certificate, XFCC),
// destination, method, path, host, gRPC method, declared intent and task,
// the mandate token, route labels and headers, and the request and trace
// ids of the decision record.
//
// The replica (authz.Server), `mandatectl test` (policies/policytest) and
// `mandatectl check` (which sends a real CheckRequest to a replica) all go
// through Extractor.Extract, so a policy test decides exactly as a
// replica does. The decision cache key is written from the same
// policies.Request by WriteKey, and a test fails when a field policies
// can read is missing from it.
//
// An input group (like the MCP call of a route labelled protocol: mcp) is
// one struct field of policies.Request, filled in Extract (or in a step
// Extract calls, like mcpRequest) and written in its own WriteKey section.
//
// Every error is an *Error whose Reason is safe to return to clients.
package attrs

import (
	"errors"
	"fmt"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/mandate-dev/mandate/authz/headers"
	"github.com/mandate-dev/mandate/authz/identity"
	"github.com/mandate-dev/mandate/authz/mcp"
	"github.com/mandate-dev/mandate/authz/reqpath"
	"github.com/mandate-dev/mandate/policies"
)

// Reason codes of extraction, besides those of the identity, reqpath and
// headers packages (which Error carries through).
const (
	ReasonBadRequest      = "bad_request"
	ReasonBadMethod       = "bad_method"
	ReasonBadHost         = "bad_host"
	ReasonHeadersTooLarge = "headers_too_large"
	ReasonMethodOverride  = "method_override"
)

// The method-override headers make some frameworks (Rails, Express's
// method-override, Spring's HiddenHttpMethodFilter variants, Google APIs)
// serve a request as another method than the one decided on.
const (
	headerHTTPMethodOverride = "x-http-method-override"
	headerHTTPMethod         = "x-http-method"
	headerMethodOverride     = "x-method-override"
)

// Error is the error type of this package.
type Error struct {
	// Reason is safe for clients.
	Reason string
	// Err says what was wrong, for logs.
	Err error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return "attrs: " + e.Reason
	}
	return "attrs: " + e.Reason + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// ReasonOf returns the client-safe reason code of an error from Extract
// or from the parsers it uses; an error of unknown kind is bad_request,
// never its text.
func ReasonOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	var idErr *identity.Error
	if errors.As(err, &idErr) {
		return string(idErr.Reason)
	}
	var pathErr *reqpath.Error
	if errors.As(err, &pathErr) {
		return string(pathErr.Reason)
	}
	var hdrErr *headers.Error
	if errors.As(err, &hdrErr) {
		return string(hdrErr.Reason)
	}
	var mcpErr *mcp.Error
	if errors.As(err, &mcpErr) {
		return string(mcpErr.Reason)
	}
	return ReasonBadRequest
}

func wrap(reason string, err error) *Error { return &Error{Reason: reason, Err: err} }

// DefaultMaxHeaderBytes bounds the total size of a request's header names
// and values when Config.MaxHeaderBytes is zero.
const DefaultMaxHeaderBytes = 64 << 10

// Config configures an Extractor.
type Config struct {
	// Identity resolves and validates the caller and destination.
	// Required.
	Identity *identity.Resolver
	// MaxHeaderBytes bounds the sum of header name and value lengths of
	// one request; above it the request is denied (headers_too_large).
	// Zero means DefaultMaxHeaderBytes; negative is an error.
	MaxHeaderBytes int
	// MCPLimits bound the MCP request bodies read on routes labelled
	// protocol: mcp.
	MCPLimits mcp.Limits
	// RequirePeerCertificate denies requests whose CheckRequest carries no
	// source.certificate (Envoy's include_peer_certificate). A certificate
	// that is present is always checked.
	RequirePeerCertificate bool
}

// Extractor reads decision inputs from CheckRequests. It is immutable and
// safe for concurrent use.
type Extractor struct {
	id        *identity.Resolver
	maxHeader int
	mcpMemo   *mcp.Memo
	needCert  bool
	certs     *certCache
	lines     *lineMemo
}

// New validates cfg and returns an Extractor.
func New(cfg Config) (*Extractor, error) {
	if cfg.Identity == nil {
		return nil, errors.New("attrs: Identity is required")
	}
	if cfg.MaxHeaderBytes < 0 {
		return nil, fmt.Errorf("attrs: MaxHeaderBytes %d is negative", cfg.MaxHeaderBytes)
	}
	x := &Extractor{id: cfg.Identity, maxHeader: cfg.MaxHeaderBytes, mcpMemo: mcp.NewMemo(cfg.MCPLimits),
		needCert: cfg.RequirePeerCertificate, certs: newCertCache(), lines: newLineMemo()}
	if x.maxHeader == 0 {
		x.maxHeader = DefaultMaxHeaderBytes
	}
	return x, nil
}

// Attributes is everything a decision reads from a CheckRequest.
type Attributes struct {
	// Request is what policies read. Intent and Task are the declared
	// ones (headers) until a verified mandate binds them (BindMandate).
	Request policies.Request
	// Token is the x-mandate token, shape-checked but not verified; ""
	// when none was sent.
	Token string
	// RequestID is Envoy's x-request-id (attributes.request.http.id),
	// for the decision record only. Client-influenced; never decides.
	RequestID string
	// TraceID is the trace id of a valid W3C traceparent header, for the
	// decision record only; "" when absent or invalid.
	TraceID string
	// RawPath is the :path as sent (truncated), for the decision record
	// of a request whose path was refused.
	RawPath string
	// MCP is the parsed MCP request of an MCP route (Request.MCP holds
	// what policies read of it), for the decision record.
	MCP mcp.Request
	// mcpShared is set when Request.MCP is the shared call of a body the
	// MCP memo remembered (see WriteKey).
	mcpShared *mcpShared
}

// Extract fills a from req, with now as the decision time. It stops at the
// first problem and returns it; a is then partly filled (what was read
// before the problem), for the decision record. a refers to req's
// strings and raw_body (not copied): leave req unchanged while a is used.
func (x *Extractor) Extract(req *authv3.CheckRequest, now time.Time, a *Attributes) error {
	r := &a.Request
	r.Now = now
	attrs := req.GetAttributes()
	httpReq := attrs.GetRequest().GetHttp()
	if httpReq == nil {
		return wrap(ReasonBadRequest, errors.New("no attributes.request.http"))
	}
	r.Labels = attrs.GetContextExtensions()
	isMCP := IsMCPRoute(r.Labels)
	if isMCP {
		// The body is read last: its memory loads while the rest is read.
		body, _ := mcpBody(httpReq)
		mcp.Prefetch(body)
	}
	hdrs := httpReq.GetHeaders()
	if len(hdrs) == 0 && len(httpReq.GetHeaderMap().GetHeaders()) > 0 {
		// Envoy with encode_raw_headers sends header_map instead.
		hdrs = flattenHeaderMap(httpReq.GetHeaderMap().GetHeaders())
	}
	hs := scanHeaders(hdrs)
	if hs.bytes > x.maxHeader {
		return wrap(ReasonHeadersTooLarge, fmt.Errorf("headers are %d bytes, max %d", hs.bytes, x.maxHeader))
	}
	r.Headers = hdrs
	a.RequestID = truncate(httpReq.GetId(), 128)
	a.TraceID = TraceID(hs.traceparent)

	caller, err := x.id.Caller(attrs.GetSource(), hdrs)
	if err != nil {
		return err
	}
	// The peer certificate, when Envoy sends it, must be the one
	// source.principal was read from (X509-SVID: exactly one URI SAN).
	if cert := attrs.GetSource().GetCertificate(); cert != "" {
		if err := x.certs.check(cert, attrs.GetSource().GetPrincipal()); err != nil {
			return err
		}
	} else if x.needCert {
		return wrap(ReasonBadCertificate, errors.New("no source.certificate (include_peer_certificate) and one is required"))
	}
	r.Subject = caller.String()
	if r.Destination, err = x.id.Destination(attrs.GetDestination()); err != nil {
		return err
	}
	if r.Method, err = validMethod(httpReq.GetMethod()); err != nil {
		return wrap(ReasonBadMethod, err)
	}
	if hs.override != "" {
		return wrap(ReasonMethodOverride, fmt.Errorf("request carries %s", hs.override))
	}
	a.RawPath = truncate(httpReq.GetPath(), 256)
	if r.Path, r.Host, err = normalizeLine(x.lines, httpReq.GetPath(), httpReq.GetHost(), pathOptions(r.Labels)); err != nil {
		return err
	}
	if svc, m, ok := reqpath.GRPC(r.Path, hs.contentType); ok {
		r.GRPCService, r.GRPCMethod = svc, m
	}
	if isMCP {
		if r.MCP, a.MCP, a.mcpShared, err = mcpRequest(attrs, r.Method, hdrs, x.mcpMemo); err != nil {
			return err
		}
	}
	if r.Intent, err = headers.IntentValue(hs.intent, hs.hasIntent); err != nil {
		return err
	}
	if r.Task, err = headers.TaskValue(hs.task, hs.hasTask); err != nil {
		return err
	}
	if a.Token, err = headers.MandateValue(hs.mandate, hs.hasMandate); err != nil {
		return err
	}
	return nil
}

// pathOptions reads a route's path opt-ins from its labels.
func pathOptions(labels map[string]string) reqpath.Options {
	if len(labels) == 0 {
		return reqpath.Options{}
	}
	return reqpath.Options{
		StripParameters: labels[policies.LabelPathParameters] == "strip",
		FoldCase:        labels[policies.LabelPathCase] == "insensitive",
	}
}

// Reason codes of BindMandate.
const (
	ReasonIntentClash = "intent_mismatch"
	ReasonTaskClash   = "task_mismatch"
)

// BindMandate makes a verified mandate the source of r's intent and task.
// Declared intent can only narrow: a header naming another intent or task
// than the mandate's is refused (intent_mismatch, task_mismatch), never
// used. r is unchanged on error.
func BindMandate(r *policies.Request, m *policies.Mandate) error {
	if r.Intent != "" && r.Intent != m.Intent {
		return wrap(ReasonIntentClash, fmt.Errorf("declared intent %q, mandate's %q", r.Intent, m.Intent))
	}
	if r.Task != "" && r.Task != m.Task {
		return wrap(ReasonTaskClash, fmt.Errorf("declared task %q, mandate's %q", r.Task, m.Task))
	}
	r.Intent, r.Task, r.Mandate = m.Intent, m.Task, m
	return nil
}

// scanned is what Extract reads from the request headers, found in the
// one pass over them that also sums their size (a lookup per header
// would hash each name again).
type scanned struct {
	bytes                          int
	traceparent, contentType       string
	override                       string // the name of a method-override header sent, or ""
	intent, task, mandate          string
	hasIntent, hasTask, hasMandate bool
}

func scanHeaders(h map[string]string) scanned {
	var s scanned
	for k, v := range h {
		s.bytes += len(k) + len(v)
		switch k {
		case "traceparent":
			s.traceparent = v
		case "content-type":
			s.contentType = v
		case headerHTTPMethodOverride, headerHTTPMethod, headerMethodOverride:
			s.override = k
		case headers.IntentHeader:
			s.intent, s.hasIntent = v, true
		case headers.TaskHeader:
			s.task, s.hasTask = v, true
		case headers.MandateHeader:
			s.mandate, s.hasMandate = v, true
		}
	}
	return s
}

var errBadMethod = errors.New("method is not an HTTP token")

// validMethod accepts an HTTP method token (RFC 9110), as sent.
func validMethod(m string) (string, error) {
	if m == "" || len(m) > 32 {
		return "", errBadMethod
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return "", errBadMethod
		}
	}
	return m, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
