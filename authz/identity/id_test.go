package identity

import (
	"errors"
	"strings"
	"testing"
)

func reasonOf(t *testing.T, err error) Reason {
	t.Helper()
	if err == nil {
		return ""
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not an *identity.Error", err, err)
	}
	return e.Reason
}

func TestParseID(t *testing.T) {
	maxTD := strings.Repeat("a", MaxTrustDomainLength)
	// An ID of exactly MaxIDLength bytes: "spiffe://" + td + "/" + path.
	longPath := strings.Repeat("p", MaxIDLength-len("spiffe://example.org/"))
	tests := []struct {
		name string
		in   string
		want Reason // "" = valid
	}{
		{"simple", "spiffe://example.org/ns/prod/sa/agent", ""},
		{"path charset", "spiffe://example.org/A-Z_a.z-0.9", ""},
		{"td charset", "spiffe://a-b_c.9/w", ""},
		{"dots inside segment", "spiffe://example.org/a.b/..c/...", ""},
		{"max id length", "spiffe://example.org/" + longPath, ""},
		{"max td length", "spiffe://" + maxTD + "/w", ""},

		{"empty", "", ReasonBadPrincipal},
		{"no scheme", "example.org/w", ReasonBadPrincipal},
		{"other scheme", "https://example.org/w", ReasonBadPrincipal},
		{"uppercase scheme", "SPIFFE://example.org/w", ReasonBadPrincipal},
		{"one slash", "spiffe:/example.org/w", ReasonBadPrincipal},
		{"scheme only", "spiffe://", ReasonBadPrincipal},
		{"missing td", "spiffe:///w", ReasonBadPrincipal},
		{"td only", "spiffe://example.org", ReasonTrustDomainOnly},
		{"td only trailing slash", "spiffe://example.org/", ReasonBadPrincipal},
		{"uppercase td", "spiffe://Example.org/w", ReasonBadPrincipal},
		{"port", "spiffe://example.org:443/w", ReasonBadPrincipal},
		{"userinfo", "spiffe://user@example.org/w", ReasonBadPrincipal},
		{"userinfo with password", "spiffe://u:p@example.org/w", ReasonBadPrincipal},
		{"percent td", "spiffe://ex%61mple.org/w", ReasonBadPrincipal},
		{"percent path", "spiffe://example.org/%61", ReasonBadPrincipal},
		{"encoded slash", "spiffe://example.org/a%2Fb", ReasonBadPrincipal},
		{"query", "spiffe://example.org/w?x=1", ReasonBadPrincipal},
		{"query on td", "spiffe://example.org?x", ReasonBadPrincipal},
		{"fragment", "spiffe://example.org/w#f", ReasonBadPrincipal},
		{"empty segment", "spiffe://example.org/a//b", ReasonBadPrincipal},
		{"leading empty segment", "spiffe://example.org//a", ReasonBadPrincipal},
		{"dot segment", "spiffe://example.org/a/./b", ReasonBadPrincipal},
		{"dotdot segment", "spiffe://example.org/a/../b", ReasonBadPrincipal},
		{"final dot", "spiffe://example.org/a/.", ReasonBadPrincipal},
		{"final dotdot", "spiffe://example.org/..", ReasonBadPrincipal},
		{"trailing slash", "spiffe://example.org/a/", ReasonBadPrincipal},
		{"space", "spiffe://example.org/a b", ReasonBadPrincipal},
		{"NUL", "spiffe://example.org/a\x00", ReasonBadPrincipal},
		{"newline", "spiffe://example.org/a\nb", ReasonBadPrincipal},
		{"non-ascii", "spiffe://example.org/caf\xc3\xa9", ReasonBadPrincipal},
		{"envoy non-utf8 replacement", "spiffe://example.org/a!", ReasonBadPrincipal},
		{"backcompat subdelim", "spiffe://example.org/a;b", ReasonBadPrincipal},
		{"backcompat tilde", "spiffe://example.org/~a", ReasonBadPrincipal},
		{"backcompat colon", "spiffe://example.org/a:b", ReasonBadPrincipal},
		{"ipv6 literal", "spiffe://[::1]/w", ReasonBadPrincipal},
		{"backslash", `spiffe://example.org\w`, ReasonBadPrincipal},
		{"leading space", " spiffe://example.org/w", ReasonBadPrincipal},
		{"dns SAN as principal", "agent.example.org", ReasonBadPrincipal},
		{"subject as principal", "CN=agent,O=example", ReasonBadPrincipal},
		{"too long", "spiffe://example.org/" + longPath + "p", ReasonPrincipalTooLong},
		{"td too long", "spiffe://" + maxTD + "a/w", ReasonPrincipalTooLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := ParseID(tt.in)
			if got := reasonOf(t, err); got != tt.want {
				t.Fatalf("ParseID(%.60q) reason = %q (err %v), want %q", tt.in, got, err, tt.want)
			}
			if tt.want == "" && id.String() != tt.in {
				t.Fatalf("ParseID(%q) = %q", tt.in, id)
			}
			if tt.want != "" && !id.IsZero() {
				t.Fatalf("ParseID(%q) returned non-zero ID %q with an error", tt.in, id)
			}
		})
	}
}

func TestParseIDAllocs(t *testing.T) {
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := ParseID("spiffe://example.org/ns/prod/sa/agent"); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("ParseID allocates %v times on success, want 0", allocs)
	}
}

func TestParseTrustDomain(t *testing.T) {
	tests := []struct {
		in   string
		want Reason
	}{
		{"example.org", ""},
		{"a_b-c.1", ""},
		{"", ReasonBadPrincipal},
		{"Example.org", ReasonBadPrincipal},
		{"example.org:8080", ReasonBadPrincipal},
		{"spiffe://example.org", ReasonBadPrincipal},
		{strings.Repeat("a", MaxTrustDomainLength+1), ReasonPrincipalTooLong},
	}
	for _, tt := range tests {
		td, err := ParseTrustDomain(tt.in)
		if got := reasonOf(t, err); got != tt.want {
			t.Errorf("ParseTrustDomain(%.40q) reason = %q (%v), want %q", tt.in, got, err, tt.want)
		}
		if tt.want == "" && td.Name() != tt.in {
			t.Errorf("ParseTrustDomain(%q) = %q", tt.in, td.Name())
		}
	}
}

func TestErrorFormat(t *testing.T) {
	_, err := ParseID("spiffe://example.org:1/x")
	if err == nil || !strings.HasPrefix(err.Error(), "identity: bad_principal: ") || !strings.Contains(err.Error(), "port") {
		t.Fatalf("error = %v", err)
	}
	if errors.Unwrap(err) == nil {
		t.Fatal("Unwrap returned nil")
	}
}
