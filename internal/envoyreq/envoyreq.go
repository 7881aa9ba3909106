// Package envoyreq builds CheckRequests the way Envoy's ext_authz HTTP
// filter fills them, for clients that are not Envoy: mandatectl check and
// the load-test harness.
package envoyreq

import (
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Params describe one HTTP request as Envoy saw it.
type Params struct {
	// Principal is the verified peer certificate's URI SAN ("" for a
	// plaintext or certificate-less connection).
	Principal   string
	Destination string
	Method      string
	// Path is the :path, query included.
	Path   string
	Host   string
	Scheme string
	// Headers are request headers; names are lowercased and repeated
	// names merged with ",", as Envoy does.
	Headers [][2]string
	// ContextExtensions are the route's ext_authz context_extensions.
	ContextExtensions map[string]string
	// Body is the request body, sent whole as with_request_body does
	// (allow_partial_message false) when non-empty.
	Body string
	// RawBody sends Body as raw_body (bytes), as Envoy does with
	// with_request_body.pack_as_bytes (which Mandate's MCP routes require),
	// instead of the body string.
	RawBody bool
	ID      string
	Time    time.Time
}

// Build returns the CheckRequest.
func Build(p Params) *authv3.CheckRequest {
	if p.Method == "" {
		p.Method = "GET"
	}
	if p.Path == "" {
		p.Path = "/"
	}
	if p.Scheme == "" {
		p.Scheme = "https"
	}
	hdrs := map[string]string{
		":method":    p.Method,
		":path":      p.Path,
		":authority": p.Host,
		":scheme":    p.Scheme,
	}
	for _, kv := range p.Headers {
		k := strings.ToLower(kv[0])
		if prev, ok := hdrs[k]; ok && !strings.HasPrefix(k, ":") {
			hdrs[k] = prev + "," + kv[1]
		} else {
			hdrs[k] = kv[1]
		}
	}
	req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{
			Address:   socket("127.0.0.1", 50000),
			Principal: p.Principal,
		},
		Destination: &authv3.AttributeContext_Peer{
			Address:   socket("127.0.0.1", 8443),
			Principal: p.Destination,
		},
		Request: &authv3.AttributeContext_Request{
			Http: &authv3.AttributeContext_HttpRequest{
				Id:       p.ID,
				Method:   p.Method,
				Headers:  hdrs,
				Path:     p.Path,
				Host:     p.Host,
				Scheme:   p.Scheme,
				Protocol: "HTTP/2",
				Size:     -1,
				Body:     p.Body,
			},
		},
		ContextExtensions: p.ContextExtensions,
	}}
	if !p.Time.IsZero() {
		req.Attributes.Request.Time = timestamppb.New(p.Time)
	}
	if p.Body != "" {
		if p.RawBody {
			req.Attributes.Request.Http.Body = ""
			req.Attributes.Request.Http.RawBody = []byte(p.Body)
		} else {
			req.Attributes.Request.Http.Body = p.Body
		}
		req.Attributes.Request.Http.Size = int64(len(p.Body))
	}
	return req
}

func socket(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}
