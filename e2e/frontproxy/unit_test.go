package frontproxy

import (
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"net/url"
	"testing"
	"unicode/utf8"
)

func TestCertPrincipalFallbacks(t *testing.T) {
	ca := newTestCA(t)
	tests := []struct {
		name, uri string
		dns       []string
		cn, want  string
	}{
		{"uri san wins", "spiffe://example.org/agent/a", []string{"a.example.org"}, "a", "spiffe://example.org/agent/a"},
		{"dns san next", "", []string{"a.example.org", "b.example.org"}, "a", "a.example.org"},
		{"subject last", "", nil, "agent-a", "CN=agent-a"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := ca.leaf(t, tc.uri, tc.dns, tc.cn)
			if got := certPrincipal(c); got != tc.want {
				t.Fatalf("certPrincipal = %q, want %q", got, tc.want)
			}
		})
	}
	c, _ := ca.leaf(t, "spiffe://example.org/x", nil, "")
	dec, err := url.QueryUnescape(urlEncodedPEM(c))
	if err != nil || dec[:27] != "-----BEGIN CERTIFICATE-----" {
		t.Fatalf("urlEncodedPEM round trip: %q %v", dec, err)
	}
}

func TestSanitizeUTF8(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain", "plain"},
		{"caf\u00e9", "caf\u00e9"},
		{"a\xffb", "a!b"},
		{"\xe2\x82", "!!"},
		{"\xc0\xafx", "!!x"},
	}
	for _, tc := range tests {
		if got := sanitizeUTF8(tc.in); got != tc.want {
			t.Errorf("sanitizeUTF8(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func FuzzSanitizeUTF8(f *testing.F) {
	for _, s := range []string{"", "abc", "a\xffb", "\xe2\x82", "\u00e9\xc3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := sanitizeUTF8(s)
		if !utf8.ValidString(got) {
			t.Fatalf("sanitizeUTF8(%q) = %q is not valid UTF-8", s, got)
		}
		if utf8.ValidString(s) && got != s {
			t.Fatalf("valid input changed: %q -> %q", s, got)
		}
		if len(got) < utf8.RuneCountInString(s) {
			t.Fatalf("output shorter than the input's rune count")
		}
	})
}

func FuzzRouteMatch(f *testing.F) {
	for _, s := range []string{"/", "/api/x", "/api?x=/admin", "//admin", "/api%2Fadmin", ""} {
		f.Add(s)
	}
	cfg := Config{
		Authz:    authv3.NewAuthorizationClient(nil),
		Upstream: &url.URL{Scheme: "http", Host: "x"},
		Routes:   []Route{{Prefix: "/api"}, {Prefix: "/api/admin"}, {Prefix: "/healthz", Disabled: true}},
	}
	if err := cfg.validate(); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, path string) {
		r, ok := cfg.match(path)
		if !ok {
			return
		}
		p := path
		if i := indexByte(p, '?'); i >= 0 {
			p = p[:i]
		}
		if len(p) < len(r.Prefix) || p[:len(r.Prefix)] != r.Prefix {
			t.Fatalf("path %q matched route %q", path, r.Prefix)
		}
		for _, other := range cfg.Routes {
			if len(other.Prefix) > len(r.Prefix) && len(p) >= len(other.Prefix) && p[:len(other.Prefix)] == other.Prefix {
				t.Fatalf("path %q matched %q, longer %q also matches", path, r.Prefix, other.Prefix)
			}
		}
	})
}

func indexByte(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}
