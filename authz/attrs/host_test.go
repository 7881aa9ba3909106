package attrs

import "testing"

func TestHost(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		bad      bool
	}{
		{in: "", want: ""},
		{in: "tickets.internal", want: "tickets.internal"},
		{in: "Tickets.Internal:8443", want: "tickets.internal"},
		// The trailing dot of a fully qualified name names the same host:
		// kept, it would not match a deny rule on "secret.internal".
		{in: "secret.internal.", want: "secret.internal"},
		{in: "SECRET.internal.:443", want: "secret.internal"},
		{in: "[::1]:8080", want: "[::1]"},
		{in: "[::1]", want: "[::1]"},
		{in: "[0:0::1]", want: "[::1]"},
		{in: "[::FFFF:1.2.3.4]", want: "[::ffff:1.2.3.4]"},
		{in: "10.0.0.1:80", want: "10.0.0.1"},
		{in: "a_b-c.internal", want: "a_b-c.internal"},
		// Refused, not guessed at.
		{in: "h:8443:80", bad: true},
		{in: "tickets.internal:", bad: true},
		{in: "h:65536", bad: true},
		{in: "h:123456", bad: true},
		{in: "user@h", bad: true},
		{in: "user:pw@h:80", bad: true},
		{in: "secret.internal..", bad: true},
		{in: "secret..internal", bad: true},
		{in: ".secret.internal", bad: true},
		{in: ".", bad: true},
		{in: ":80", bad: true},
		{in: "host:80x", bad: true},
		{in: "host name", bad: true},
		{in: "host/path", bad: true},
		{in: "h\u00e9", bad: true},
		{in: "[::1", bad: true},
		{in: "[::1]x", bad: true},
		{in: "[fe80::1%25eth0]", bad: true},
		{in: "[1.2.3.4]", bad: true},
		{in: "127.1", bad: true},
		{in: "0x7f.0.0.1", bad: true},
		{in: "010.0.0.1", bad: true},
		{in: "a.123", bad: true},
		{in: "[::1]:", bad: true},
	} {
		got, err := Host(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("Host(%q) = %q, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("Host(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func FuzzHost(f *testing.F) {
	for _, s := range []string{"a.b:1", "[::1]:2", "A.", "h:1:2", "u@h", "127.1", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := Host(s)
		if err != nil {
			return
		}
		again, err := Host(h)
		if err != nil || again != h {
			t.Fatalf("Host(%q) = %q, which normalizes to %q, %v", s, h, again, err)
		}
	})
}

func TestTraceID(t *testing.T) {
	const good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	for _, tc := range []struct{ in, want string }{
		{good, "4bf92f3577b34da6a3ce929d0e0e4736"},
		{"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", "4bf92f3577b34da6a3ce929d0e0e4736"},
		{"", ""},
		{good + "-x", ""}, // version 00 has no extra fields
		{"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ""},
		{"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", ""},
		{"00-00000000000000000000000000000000-00f067aa0ba902b7-01", ""},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", ""},
		{"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ""},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g", ""},
	} {
		if got := TraceID(tc.in); got != tc.want {
			t.Errorf("TraceID(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
