package pattern

import (
	"errors"
	"testing"
)

func TestMatch(t *testing.T) {
	tests := []struct {
		pattern string
		name    string
		want    bool
	}{
		{"spiffe://example.org/agent/support", "spiffe://example.org/agent/support", true},
		{"spiffe://example.org/agent/support", "spiffe://example.org/agent/support2", false},
		{"spiffe://example.org/agent/support", "spiffe://example.org/agent", false},
		{"spiffe://example.org/agent/*", "spiffe://example.org/agent/support", true},
		{"spiffe://example.org/agent/*", "spiffe://example.org/agent/support/x", false},
		{"spiffe://example.org/agent/*", "spiffe://example.org/agent", false},
		{"spiffe://example.org/agent/*", "spiffe://example.org/agent/", false},
		{"spiffe://example.org/agent/**", "spiffe://example.org/agent", true},
		{"spiffe://example.org/agent/**", "spiffe://example.org/agent/a/b/c", true},
		{"spiffe://example.org/agent/**", "spiffe://example.org/agents/a", false},
		{"spiffe://example.org/agent/sup-*", "spiffe://example.org/agent/sup-1", true},
		{"spiffe://example.org/agent/sup-*", "spiffe://example.org/agent/sup-", true},
		{"spiffe://example.org/agent/sup-*", "spiffe://example.org/agent/su", false},
		{"spiffe://example.org/agent/a*b*c", "spiffe://example.org/agent/abc", true},
		{"spiffe://example.org/agent/a*b*c", "spiffe://example.org/agent/aXbYc", true},
		{"spiffe://example.org/agent/a*b*c", "spiffe://example.org/agent/aXcYb", false},
		{"spiffe://example.org/agent/a*a", "spiffe://example.org/agent/a", false},
		{"/tickets/*/comments", "/tickets/42/comments", true},
		{"/tickets/*/comments", "/tickets//comments", false},
		{"/tickets/**", "/tickets", true},
		{"/tickets/**", "/tickets/", true},
		{"/tickets/**", "/ticketsX", false},
		{"/**", "/", true},
		{"/**", "/a/b", true},
		{"/", "/", true},
		{"/", "/a", false},
		{"/*", "/", false},
		{"/*", "/a", true},
	}
	for _, tt := range tests {
		p, err := Compile(tt.pattern)
		if err != nil {
			t.Fatalf("Compile(%q): %v", tt.pattern, err)
		}
		if got := p.Match(tt.name); got != tt.want {
			t.Errorf("%q.Match(%q) = %v, want %v", tt.pattern, tt.name, got, tt.want)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	for _, p := range []string{"", "/a/**/b", "/a/b**", "/a?", "/a#b", "/[ab]"} {
		if _, err := Compile(p); !errors.Is(err, ErrInvalid) {
			t.Errorf("Compile(%q) error = %v, want ErrInvalid", p, err)
		}
	}
}

func TestLiteral(t *testing.T) {
	tests := []struct {
		pattern string
		literal bool
		prefix  int
	}{
		{"spiffe://example.org/a", true, 4},
		{"spiffe://example.org/*", false, 3},
		{"spiffe://example.org/**", false, 3},
		{"/a/b*/c", false, 2},
	}
	for _, tt := range tests {
		p := MustCompile(tt.pattern)
		if p.IsLiteral() != tt.literal {
			t.Errorf("%q.IsLiteral() = %v", tt.pattern, p.IsLiteral())
		}
		if n := len(p.LiteralPrefix()); n != tt.prefix {
			t.Errorf("%q.LiteralPrefix() has %d segments, want %d", tt.pattern, n, tt.prefix)
		}
	}
	if (Pattern{}).Match("") {
		t.Error("zero Pattern matched")
	}
}

func FuzzMatch(f *testing.F) {
	f.Add("spiffe://example.org/a/*", "spiffe://example.org/a/b")
	f.Add("/x/**", "/x/y/z")
	f.Add("/a*b*c", "/abc")
	f.Fuzz(func(t *testing.T, pat, name string) {
		p, err := Compile(pat)
		if err != nil {
			return
		}
		got := p.Match(name)
		if p.IsLiteral() && got != (pat == name) {
			t.Fatalf("literal %q.Match(%q) = %v", pat, name, got)
		}
		// Match's literal shortcut agrees with the segment walk.
		if walk := p.matchSegments(name); got != walk {
			t.Fatalf("%q.Match(%q) = %v, segment by segment %v", pat, name, got, walk)
		}
	})
}
