package attrs

import (
	"bytes"
	"hash/maphash"
	"strconv"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/mandate-dev/mandate/authz/decisioncache"
)

// TestMemoSharedKey: for MCP requests the memo answers (the same call
// under new ids), Attributes.WriteKey writes the bytes WriteKey writes
// from the request alone, whatever key selection is current and however
// it changes between requests (the arguments' part is kept per
// selection), and the requests share one MCP call.
func TestMemoSharedKey(t *testing.T) {
	x := newTestExtractor(t, false)
	const args = `{"owner":"acme","repo":"widgets","n":3,"q":"a long enough tail for the memo to keep it"}`
	seeds := [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}
	sels := []KeySelection{
		{Arguments: []string{"owner"}},
		{Arguments: []string{"n", "owner", "repo"}},
		{Arguments: []string{"absent"}},
		{},
		{AllArguments: true, ArgSeeds: seeds},
		{AllArguments: true, ArgSeeds: [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}},
		{Arguments: []string{"owner"}},
		{Arguments: []string{"repo"}},
	}
	shared := 0
	var call any
	for i := range 3 * len(sels) {
		body := `{"jsonrpc":"2.0","id":` + strconv.Itoa(i) + `,"method":"tools/call","params":{"name":"github.list_issues","arguments":` + args + `}}`
		req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source:            &authv3.AttributeContext_Peer{Principal: "spiffe://example.org/agent/coder"},
			ContextExtensions: map[string]string{LabelProtocol: ProtocolMCP},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: "POST", Path: "/mcp", Host: "mcp.internal", Body: body,
				Headers: map[string]string{"content-type": "application/json"},
			}},
		}}
		var a Attributes
		if err := x.Extract(req, time.Unix(0, 0), &a); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if a.mcpShared != nil {
			shared++
			if call != nil && call != any(a.Request.MCP) {
				t.Fatalf("request %d: another MCP call than the memo entry's", i)
			}
			call = a.Request.MCP
		}
		sel := sels[i%len(sels)]
		var got, want decisioncache.Key
		a.WriteKey(&got, 3, &sel)
		WriteKey(&want, 3, &a.Request, &sel)
		if !bytes.Equal(got.Bytes(), want.Bytes()) {
			t.Fatalf("request %d, selection %+v: key %q, want %q", i, sel, got.Bytes(), want.Bytes())
		}
	}
	// The memo answers from the fourth sighting on (glance, fingerprint,
	// admission).
	if shared < 3*len(sels)-3 {
		t.Fatalf("%d of %d requests answered by the memo", shared, 3*len(sels))
	}
}
