package main

import (
	"net/http"
	"testing"

	"github.com/mandate-dev/mandate/e2e/internal/agentproto"
)

func TestSetTargetSendsTargetVerbatim(t *testing.T) {
	tests := []string{"/", "/a/b?x=1&y=2", "/a/../admin", "/a%2Fb", "//admin", "//admin/x?q=1", "/x/./y"}
	for _, target := range tests {
		t.Run(target, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodGet, "https://127.0.0.1:1/", nil)
			if err != nil {
				t.Fatal(err)
			}
			setTarget(req.URL, target)
			if got := req.URL.RequestURI(); got != target {
				t.Fatalf("RequestURI() = %q, want %q", got, target)
			}
		})
	}
}

func TestDecisionOf(t *testing.T) {
	tests := []struct {
		name, body, id, reason string
	}{
		{"deny body", `{"decision_id":"d1","reason":"revoked"}`, "d1", "revoked"},
		{"upstream echo", `{"method":"GET","headers":{"X-Mandate-Decision-Id":["d2"]}}`, "d2", ""},
		{"echo without decision", `{"method":"GET","headers":{}}`, "", ""},
		{"not json", `forbidden`, "", ""},
		{"empty", ``, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, reason := decisionOf(agentproto.Response{Body: tc.body})
			if id != tc.id || reason != tc.reason {
				t.Fatalf("decisionOf(%q) = %q, %q; want %q, %q", tc.body, id, reason, tc.id, tc.reason)
			}
		})
	}
}
