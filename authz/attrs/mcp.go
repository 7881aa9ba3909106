package attrs

import (
	"hash/maphash"
	"unsafe"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/mandate-dev/mandate/authz/decisioncache"
	"github.com/mandate-dev/mandate/authz/mcp"
	"github.com/mandate-dev/mandate/policies"
)

// An operator marks an MCP route with this context_extensions label;
// only there is the body read (other routes pay nothing for MCP).
const (
	LabelProtocol = "protocol"
	ProtocolMCP   = "mcp"
)

// IsMCPRoute reports whether the route is labelled protocol: mcp.
func IsMCPRoute(labels map[string]string) bool {
	return labels[LabelProtocol] == ProtocolMCP
}

// mcpRequest reads the MCP request of a request on an MCP route. A POST
// carries one JSON-RPC request, parsed strictly and checked against the
// MCP filter's metadata and the Mcp-* headers; GET (the server's event
// stream) and DELETE (ending the session) carry none and get a nil call,
// which no MCP action matches. Anything else is refused.
func mcpRequest(attrs *authv3.AttributeContext, method string, hdrs map[string]string, memo *mcp.Memo) (*policies.MCPCall, mcp.Request, error) {
	httpReq := attrs.GetRequest().GetHttp()
	body := httpReq.GetBody()
	if raw := httpReq.GetRawBody(); len(raw) > 0 {
		if body != "" {
			return nil, mcp.Request{}, &mcp.Error{Reason: mcp.ReasonMismatch}
		}
		body = rawBodyString(raw)
	}
	switch method {
	case "POST":
	case "GET", "DELETE":
		if body != "" || hdrs[mcp.HeaderMethod] != "" || hdrs[mcp.HeaderName] != "" {
			return nil, mcp.Request{}, &mcp.Error{Reason: mcp.ReasonNotRequest}
		}
		return nil, mcp.Request{}, nil
	default:
		return nil, mcp.Request{}, &mcp.Error{Reason: mcp.ReasonNotRequest}
	}
	req, err := memo.FromEnvoy(mcp.Sources{
		Body:     body,
		Headers:  hdrs,
		Metadata: attrs.GetMetadataContext().GetFilterMetadata()[mcp.MetadataNamespace],
	})
	if err != nil {
		return nil, mcp.Request{}, err
	}
	return &policies.MCPCall{Method: req.Method, Tool: req.Tool(), ResourceURI: req.URI, Arguments: req.Arguments}, req, nil
}

// rawBodyString returns raw_body (how Envoy sends the body with
// pack_as_bytes, which MCP routes require) as a string without copying
// it: a copy would more than double what an MCP decision allocates. The
// bytes are the CheckRequest's own (the proto decoder copies bytes fields
// out of gRPC's receive buffers) and nothing writes to a decoded request;
// in-process callers of Extract must likewise leave raw_body unchanged
// afterwards, since the parsed request and the decision record keep
// substrings of it.
func rawBodyString(raw []byte) string {
	return unsafe.String(unsafe.SliceData(raw), len(raw))
}

// writeMCP writes the MCP inputs a decision can read: method, tool and
// resource, and of the arguments only what conditions read: the values of
// the names they read by constant name, or a 128-bit keyed hash of all of
// them when some condition reads them otherwise.
func writeMCP(k *decisioncache.Key, c *policies.MCPCall, sel *KeySelection) {
	if c == nil {
		k.Uint(0)
		return
	}
	k.Uint(1)
	k.String(c.Method)
	k.String(c.Tool)
	k.String(c.ResourceURI)
	if sel.AllArguments {
		k.Uint(maphash.String(sel.ArgSeeds[0], c.Arguments))
		k.Uint(maphash.String(sel.ArgSeeds[1], c.Arguments))
		return
	}
	appendArgValues(k, sel.Arguments, c.Arguments)
}

// keyWriter is what argument values are written to.
type keyWriter interface {
	Uint(uint64)
	String(string)
}

// appendArgValues writes, for each name in keys (sorted), whether args
// has it and its raw JSON value, in one pass over args.
func appendArgValues(k keyWriter, keys []string, args string) {
	if len(keys) == 0 {
		return
	}
	var stack [8]string
	vals := stack[:0]
	if len(keys) > len(stack) {
		vals = make([]string, 0, len(keys))
	}
	vals = vals[:len(keys)]
	found := 0
	mcp.Members(args, func(name, value string) bool {
		for i, key := range keys {
			if key == name {
				vals[i] = value
				found++
			}
		}
		return found < len(keys)
	})
	for _, v := range vals {
		if v == "" {
			k.Uint(0)
			continue
		}
		k.Uint(1)
		k.String(v)
	}
}
