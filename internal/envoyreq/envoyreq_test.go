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
