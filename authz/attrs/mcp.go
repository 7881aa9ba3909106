package attrs

import (
	"hash/maphash"
	"slices"
	"sync/atomic"
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

// mcpBody returns the request's body: raw_body (Envoy's
// pack_as_bytes) when set, else body; both reports that both were set,
// which no Envoy sends.
func mcpBody(h *authv3.AttributeContext_HttpRequest) (body string, both bool) {
	if raw := h.GetRawBody(); len(raw) > 0 {
		return rawBodyString(raw), h.GetBody() != ""
	}
	return h.GetBody(), false
}

// mcpRequest reads the MCP request of a request on an MCP route. A POST
// carries one JSON-RPC request, parsed strictly and checked against the
// MCP filter's metadata and the Mcp-* headers; GET (the server's event
// stream) and DELETE (ending the session) carry none and get a nil call,
// which no MCP action matches. Anything else is refused.
func mcpRequest(attrs *authv3.AttributeContext, method string, hdrs map[string]string, memo *mcp.Memo) (*policies.MCPCall, mcp.Request, *mcpShared, error) {
	body, both := mcpBody(attrs.GetRequest().GetHttp())
	if both {
		return nil, mcp.Request{}, nil, &mcp.Error{Reason: mcp.ReasonMismatch}
	}
	switch method {
	case "POST":
	case "GET", "DELETE":
		if body != "" || hdrs[mcp.HeaderMethod] != "" || hdrs[mcp.HeaderName] != "" {
			return nil, mcp.Request{}, nil, &mcp.Error{Reason: mcp.ReasonNotRequest}
		}
		return nil, mcp.Request{}, nil, nil
	default:
		return nil, mcp.Request{}, nil, &mcp.Error{Reason: mcp.ReasonNotRequest}
	}
	req, err := memo.FromEnvoy(mcp.Sources{
		Body:     body,
		Headers:  hdrs,
		Metadata: attrs.GetMetadataContext().GetFilterMetadata()[mcp.MetadataNamespace],
	})
	if err != nil {
		return nil, mcp.Request{}, nil, err
	}
	if sh := req.Shared(); sh != nil {
		ms, _ := sh.Load().(*mcpShared)
		if ms == nil {
			ms = &mcpShared{call: mcpCall(&req)}
			sh.Store(ms) // a concurrent first answer may store its own, equal one
		}
		return &ms.call, req, ms, nil
	}
	c := mcpCall(&req)
	return &c, req, nil, nil
}

func mcpCall(r *mcp.Request) policies.MCPCall {
	return policies.MCPCall{Method: r.Method, Tool: r.Tool(), ResourceURI: r.URI, Arguments: r.Arguments}
}

// mcpShared is what the requests the MCP memo answered from one
// remembered body share (mcp.Shared): their MCP call, which holds no
// request id, and what the cache key holds of its arguments under the
// current key selection. Its call is never modified.
type mcpShared struct {
	call policies.MCPCall
	args atomic.Pointer[argKey]
}

// argKey is what writeMCP writes of a call's arguments under one key
// selection: the values of keys, or the two hashes under seeds when all.
type argKey struct {
	all   bool
	seeds [2]maphash.Seed
	keys  []string
	vals  []string
	sums  [2]uint64
}

// argKeyOf returns what writeMCP writes of c's arguments under sel, from
// ms when it holds it for the same selection.
func (ms *mcpShared) argKeyOf(c *policies.MCPCall, sel *KeySelection) *argKey {
	if ak := ms.args.Load(); ak != nil && ak.all == sel.AllArguments && ak.seeds == sel.ArgSeeds && slices.Equal(ak.keys, sel.Arguments) {
		return ak
	}
	ak := &argKey{all: sel.AllArguments, seeds: sel.ArgSeeds, keys: sel.Arguments}
	if ak.all {
		ak.sums = [2]uint64{maphash.String(sel.ArgSeeds[0], c.Arguments), maphash.String(sel.ArgSeeds[1], c.Arguments)}
	} else {
		ak.vals = make([]string, len(sel.Arguments))
		mcp.MemberValues(c.Arguments, sel.Arguments, ak.vals)
	}
	ms.args.Store(ak)
	return ak
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
//
// ms, when the call is the shared one of a remembered body, holds what
// the arguments write as (computed once per key selection); src, when not
// nil, is the parsed request c was made from, whose noted members spare
// reading the arguments again.
func writeMCP(k *decisioncache.Key, c *policies.MCPCall, sel *KeySelection, ms *mcpShared, src *mcp.Request) {
	if c == nil {
		k.Uint(0)
		return
	}
	k.Uint(1)
	k.String(c.Method)
	k.String(c.Tool)
	k.String(c.ResourceURI)
	if ms != nil && c == &ms.call {
		ak := ms.argKeyOf(c, sel)
		if ak.all {
			k.Uint(ak.sums[0])
			k.Uint(ak.sums[1])
			return
		}
		writeArgValues(k, ak.vals)
		return
	}
	if sel.AllArguments {
		k.Uint(maphash.String(sel.ArgSeeds[0], c.Arguments))
		k.Uint(maphash.String(sel.ArgSeeds[1], c.Arguments))
		return
	}
	if len(sel.Arguments) == 0 {
		return
	}
	var stack [8]string
	vals := stack[:0]
	if len(sel.Arguments) > len(stack) {
		vals = make([]string, 0, len(sel.Arguments))
	}
	vals = vals[:len(sel.Arguments)]
	if src != nil && src.Arguments == c.Arguments {
		src.ArgumentValues(sel.Arguments, vals)
	} else {
		mcp.MemberValues(c.Arguments, sel.Arguments, vals)
	}
	writeArgValues(k, vals)
}

// writeArgValues writes argument values (mcp.MemberValues) to k.
func writeArgValues(k *decisioncache.Key, vals []string) {
	for _, v := range vals {
		if v == "" {
			k.Uint(0)
			continue
		}
		k.Uint(1)
		k.String(v)
	}
}
