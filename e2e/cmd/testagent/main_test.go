package main

import (
	"net/http"
	"testing"
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
