package authz

import (
	"math/rand/v2"
	"strings"
	"testing"
)

// TestMCPMemoDecidesAsFresh: a replica that has remembered an MCP body
// (the parse memo of package mcp) decides every other body exactly as a
// replica that never saw one: the same call under new ids, bodies that
// differ from the remembered one in one byte (random flips, a duplicate
// key smuggled through the id, another owner the deny rule reads) and a
// duplicate-key body sharing the remembered body's prefix. Compared: the
// response (allow, or status, JSON-RPC id, error code and reason) and the
// MCP fields of the decision record.
func TestMCPMemoDecidesAsFresh(t *testing.T) {
	warm := mcpHarness(t, nil)
	clean := toolCall("7", "github.list_issues", `{"owner":"acme","repo":"widgets","q":"wraps when the widget count overflows"}`)
	at := strings.Index(clean, `"id":7`) + len(`"id":`)
	pre, post := clean[:at], clean[at+1:]
	probes := []string{
		clean,
		pre + "8" + post,
		pre + `"req-8"` + post,
		pre + `7,"id":8` + post,
		pre + `7,"method":"tools/list"` + post,
		pre + "7" + strings.Replace(post, `"repo"`, `"owner"`, 1),
		pre + "7" + strings.Replace(post, `"repo"`, `"OWNER"`, 1),
		pre + "7" + strings.Replace(post, `"acme"`, `"evil"`, 1),
		pre + "7" + strings.Replace(post, "list_issues", "delete_repo", 1),
	}
	rng := rand.New(rand.NewPCG(9, 12))
	for range 300 {
		b := []byte(clean)
		const alphabet = "\"{}[],:\\ 0189aAzZ\xff\x00"
		b[rng.IntN(len(b))] = alphabet[rng.IntN(len(alphabet))]
		probes = append(probes, string(b))
	}
	for i, body := range probes {
		// Remember the clean body (seen three times in a row), then
		// decide the probe.
		for range 3 {
			if res := warm.checkMCP(t, mcpReq(clean)); !res.allowed {
				t.Fatalf("clean body denied: %s", res.body)
			}
		}
		got, gotRec := decideMCP(t, warm, body)
		fresh := mcpHarness(t, nil)
		want, wantRec := decideMCP(t, fresh, body)
		if got != want || gotRec != wantRec {
			t.Fatalf("probe %d %q:\nremembered: %+v %+v\nfresh:      %+v %+v", i, body, got, gotRec, want, wantRec)
		}
	}
}

// mcpDecision is what TestMCPMemoDecidesAsFresh compares of a decision.
type mcpDecision struct {
	allowed       bool
	status        int
	rpcID, reason string
	code          int
}

type mcpRecord struct{ id, method, tool, resource, args string }

func decideMCP(t *testing.T, h *harness, body string) (mcpDecision, mcpRecord) {
	t.Helper()
	res := h.checkMCP(t, mcpReq(body))
	d := mcpDecision{allowed: res.allowed, status: res.status, rpcID: string(res.rpc.ID), reason: res.rpc.Error.Data.Reason, code: res.rpc.Error.Code}
	r := h.log.last()
	return d, mcpRecord{r.MCPRequestID, r.MCPMethod, r.MCPTool, r.MCPResource, r.MCPArguments}
}
