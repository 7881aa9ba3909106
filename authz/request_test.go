package authz

import "testing"

func TestNormalizeHost(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		bad      bool
	}{
		{in: "", want: ""},
		{in: "tickets.internal", want: "tickets.internal"},
		{in: "Tickets.Internal:8443", want: "tickets.internal"},
		{in: "tickets.internal:", want: "tickets.internal"},
		// The trailing dot of a fully qualified name names the same host:
		// kept, it would not match a deny rule on "secret.internal".
		{in: "secret.internal.", want: "secret.internal"},
		{in: "SECRET.internal.:443", want: "secret.internal"},
		{in: "[::1]:8080", want: "[::1]"},
		{in: "[::1]", want: "[::1]"},
		{in: "secret.internal..", bad: true},
		{in: "secret..internal", bad: true},
		{in: ".secret.internal", bad: true},
		{in: ".", bad: true},
		{in: "host:80x", bad: true},
		{in: "host name", bad: true},
		{in: "host/path", bad: true},
		{in: "h\u00e9", bad: true},
	} {
		got, err := normalizeHost(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("normalizeHost(%q) = %q, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("normalizeHost(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}
