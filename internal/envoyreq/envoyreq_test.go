package envoyreq

import "testing"

func TestBuildMergesAndLowercases(t *testing.T) {
	req := Build(Params{
		Principal: "spiffe://example.org/a", Method: "POST", Path: "/x?y=1", Host: "svc",
		Headers:           [][2]string{{"X-Mandate-Intent", "read"}, {"Accept", "a"}, {"accept", "b"}},
		ContextExtensions: map[string]string{"resource": "tickets"},
	})
	h := req.GetAttributes().GetRequest().GetHttp().GetHeaders()
	if h["x-mandate-intent"] != "read" || h["accept"] != "a,b" || h[":path"] != "/x?y=1" || h[":authority"] != "svc" {
		t.Fatalf("headers %v", h)
	}
	if _, ok := h["X-Mandate-Intent"]; ok {
		t.Fatal("header name not lowercased")
	}
	if req.GetAttributes().GetSource().GetPrincipal() != "spiffe://example.org/a" ||
		req.GetAttributes().GetContextExtensions()["resource"] != "tickets" {
		t.Fatal("principal or context extensions lost")
	}
}

func TestBuildRawBody(t *testing.T) {
	const body = `{"jsonrpc":"2.0"}`
	for _, raw := range []bool{false, true} {
		h := Build(Params{Method: "POST", Body: body, RawBody: raw}).GetAttributes().GetRequest().GetHttp()
		gotRaw, gotStr := string(h.GetRawBody()), h.GetBody()
		if raw && (gotRaw != body || gotStr != "") || !raw && (gotStr != body || gotRaw != "") {
			t.Fatalf("RawBody %v: body %q, raw_body %q", raw, gotStr, gotRaw)
		}
		if h.GetSize() != int64(len(body)) {
			t.Fatalf("size %d", h.GetSize())
		}
	}
}
