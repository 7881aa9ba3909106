package mcp

import (
	"google.golang.org/protobuf/types/known/structpb"
)

// Names of what Envoy sends about an MCP request.
const (
	// MetadataNamespace is the dynamic metadata namespace of Envoy's MCP
	// filter (envoy.filters.http.mcp); ext_authz forwards it when listed
	// in metadata_context_namespaces.
	MetadataNamespace = "envoy.filters.http.mcp"
	// HeaderMethod and HeaderName are the MCP request headers naming the
	// method and its target (params.name or params.uri).
	HeaderMethod = "mcp-method"
	HeaderName   = "mcp-name"
	// HeaderPartialBody is set by Envoy's ext_authz when it sent only the
	// first max_request_bytes of the body (allow_partial_message).
	HeaderPartialBody = "x-envoy-auth-partial-body"
)

// Sources is everything Envoy reports about one MCP request.
type Sources struct {
	// Body is the request body ext_authz sent (with_request_body).
	Body string
	// Headers are the request headers, names lowercased.
	Headers map[string]string
	// Metadata is the MCP filter's dynamic metadata; nil when absent.
	Metadata *structpb.Struct
}

// FromEnvoy parses the body and checks that every other source present
// agrees with it: a partial body or the filter's is_exceeding_limit
// marker is refused (ReasonPartialBody), and a method or name in the
// filter metadata or the Mcp-Method / Mcp-Name headers that differs from
// the body's is refused (ReasonMismatch). A name is compared only for the
// methods whose target Parse reads (Request.Target).
func FromEnvoy(src Sources, lim Limits) (Request, error) {
	return fromEnvoy(src, nil, lim)
}

// FromEnvoy is FromEnvoy with the body parsed through the memo (and its
// limits).
func (m *Memo) FromEnvoy(src Sources) (Request, error) {
	if m == nil {
		return fromEnvoy(src, nil, Limits{})
	}
	return fromEnvoy(src, m, m.lim)
}

func fromEnvoy(src Sources, m *Memo, lim Limits) (Request, error) {
	if v, ok := src.Headers[HeaderPartialBody]; ok && v != "false" {
		return Request{}, &Error{Reason: ReasonPartialBody}
	}
	if md := src.Metadata.GetFields(); md != nil {
		if md["is_exceeding_limit"].GetBoolValue() {
			return Request{}, &Error{Reason: ReasonPartialBody}
		}
		if v, ok := md["is_mcp_request"]; ok && !v.GetBoolValue() {
			return Request{}, &Error{Reason: ReasonNotRequest}
		}
	}
	var r Request
	var err error
	if m != nil {
		r, err = m.Parse(src.Body)
	} else {
		r, err = Parse(src.Body, lim)
	}
	if err != nil {
		return Request{}, err
	}
	if md := src.Metadata.GetFields(); md != nil {
		if !metaAgrees(md["method"], r.Method) {
			return Request{}, &Error{Reason: ReasonMismatch}
		}
		params := md["params"].GetStructValue().GetFields()
		if !metaAgrees(params["name"], r.Name) || !metaAgrees(params["uri"], r.URI) {
			return Request{}, &Error{Reason: ReasonMismatch}
		}
	}
	if v, ok := src.Headers[HeaderMethod]; ok && v != r.Method {
		return Request{}, &Error{Reason: ReasonMismatch}
	}
	if v, ok := src.Headers[HeaderName]; ok && r.Target() != "" && v != r.Target() {
		return Request{}, &Error{Reason: ReasonMismatch}
	}
	return r, nil
}

// metaAgrees reports whether a metadata value is absent, or the string
// want. want "" means Parse does not read that field for the request's
// method (a name for initialize, say): nothing to compare.
func metaAgrees(v *structpb.Value, want string) bool {
	if v == nil || want == "" {
		return true
	}
	s, ok := v.GetKind().(*structpb.Value_StringValue)
	return ok && s.StringValue == want
}
