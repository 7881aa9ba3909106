package transport

import (
	"context"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestCheckLoopback(t *testing.T) {
	tests := []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:9191", true},
		{"127.8.9.1:1", true},
		{"[::1]:9191", true},
		{"localhost:80", true},
		{"unix:///tmp/x.sock", true},
		{":9191", false},
		{"0.0.0.0:9191", false},
		{"10.0.0.1:9191", false},
		{"[::]:9191", false},
		{"example.org:9191", false},
		{"127.0.0.1", false},
	}
	for _, tt := range tests {
		if err := CheckLoopback(tt.addr); (err == nil) != tt.ok {
			t.Errorf("CheckLoopback(%q) = %v, want ok=%v", tt.addr, err, tt.ok)
		}
	}
}

func TestInsecureRefusedOffLoopback(t *testing.T) {
	if _, _, err := ServerOption(context.Background(), ":9191", Config{Insecure: true}); err == nil {
		t.Fatal("plaintext server allowed on all interfaces")
	}
	if _, _, err := DialOption(context.Background(), "10.1.2.3:1", Config{Insecure: true}); err == nil {
		t.Fatal("plaintext client allowed to a non-loopback address")
	}
}

func TestAuthorizer(t *testing.T) {
	auth, err := Authorizer([]string{"spiffe://example.org/envoy/*", "spiffe://example.org/ops/alice"})
	if err != nil {
		t.Fatal(err)
	}
	for id, ok := range map[string]bool{
		"spiffe://example.org/envoy/sidecar": true,
		"spiffe://example.org/ops/alice":     true,
		"spiffe://example.org/ops/bob":       false,
		"spiffe://other.org/envoy/sidecar":   false,
		"spiffe://example.org/envoy/a/b":     false,
	} {
		if err := auth(spiffeid.RequireFromString(id), nil); (err == nil) != ok {
			t.Errorf("authorize %s = %v, want ok=%v", id, err, ok)
		}
	}
	for _, bad := range [][]string{nil, {"example.org/x"}, {"spiffe://x/**/y"}} {
		if _, err := Authorizer(bad); err == nil {
			t.Errorf("Authorizer(%q) accepted", bad)
		}
	}
}
