package pattern

import (
	"math/rand/v2"
	"strings"
	"testing"
)

func TestCovers(t *testing.T) {
	tests := []struct {
		parent, child string
		want          bool
	}{
		{"/a/b", "/a/b", true},
		{"/a/b", "/a/c", false},
		{"/a/*", "/a/b", true},
		{"/a/*", "/a/*", true},
		{"/a/*", "/a/b*", true},
		{"/a/*", "/a/", false}, // literal empty segment is not matched by "*"
		{"/a/*", "/a/**", false},
		{"/a/*", "/a/b/c", false},
		{"/a/b", "/a/*", false},
		{"/a/**", "/a", true},
		{"/a/**", "/a/b/c", true},
		{"/a/**", "/a/*/c", true},
		{"/a/**", "/a/b/**", true},
		{"/a/**", "/a/**", true},
		{"/a/b/**", "/a/**", false},
		{"/a/**", "/b/**", false},
		{"/a/**", "/**", false},
		{"**", "/anything/**", true},
		{"**", "x", true},
		{"/a/b", "/a/**", false},
		{"/a/x*", "/a/xy", true},
		{"/a/x*", "/a/yx", false},
		{"/a/x*", "/a/xy*", true},
		{"/a/x*", "/a/*x", false},
		{"/a/x*", "/a/*", false},
		{"/a/*x*", "/a/ax*b", true},
		{"/a/*x*", "/a/a*b", false},
		{"/a/a*b", "/a/a*b", true},
		{"/a/a*b", "/a/ab*b", true},
		{"/a/a*b", "/a/a*", false},
		{"/a/a*a", "/a/a*a*a", true},
		{"/a/ab*", "/a/a*b", false},
		{"spiffe://example.org/agent/**", "spiffe://example.org/agent/support/*", true},
		{"spiffe://example.org/agent/*", "spiffe://example.org/agent/support", true},
		{"spiffe://example.org/agent/*", "spiffe://example.org/**", false},
		{"spiffe://example.org/agent/sup-*", "spiffe://example.org/agent/sup-1", true},
		{"spiffe://example.org/agent/sup-*", "spiffe://example.org/agent/su", false},
	}
	for _, tt := range tests {
		p, c := MustCompile(tt.parent), MustCompile(tt.child)
		if got := Covers(p, c); got != tt.want {
			t.Errorf("Covers(%q, %q) = %v, want %v", tt.parent, tt.child, got, tt.want)
		}
	}
}

func TestCoversZero(t *testing.T) {
	var zero Pattern
	p := MustCompile("/a")
	if !Covers(p, zero) {
		t.Error("zero child (matches nothing) must be covered")
	}
	if Covers(zero, p) {
		t.Error("zero parent (matches nothing) must not cover /a")
	}
	if !Covers(zero, zero) {
		t.Error("zero covers zero")
	}
}

// Segment alphabet for random patterns and names: small, so random names hit
// random patterns often enough for the property to bite.
var (
	patSegs  = []string{"", "a", "b", "ab", "ba", "*", "a*", "*a", "a*b", "*b*", "b*a*b"}
	nameSegs = []string{"", "a", "b", "ab", "ba", "aa", "bb", "aab", "abb", "bab", "*", "a*"}
)

func randPattern(r *rand.Rand) string {
	n := r.IntN(4)
	segs := make([]string, 0, n+1)
	for range n {
		segs = append(segs, patSegs[r.IntN(len(patSegs))])
	}
	if r.IntN(3) == 0 {
		segs = append(segs, "**")
	}
	if s := strings.Join(segs, "/"); s != "" {
		return s
	}
	return "a"
}

func randName(r *rand.Rand) string {
	n := 1 + r.IntN(5)
	segs := make([]string, n)
	for i := range segs {
		segs[i] = nameSegs[r.IntN(len(nameSegs))]
	}
	return strings.Join(segs, "/")
}

// TestCoversProperty checks soundness: whenever Covers(p, c) holds, every
// name c matches, p matches too. It also checks that Covers is not trivially
// false by requiring many true answers, and reflexivity.
func TestCoversProperty(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	const pairs = 20000
	covered := 0
	for range pairs {
		ps, cs := randPattern(r), randPattern(r)
		p, err := Compile(ps)
		if err != nil {
			t.Fatalf("Compile(%q): %v", ps, err)
		}
		c, err := Compile(cs)
		if err != nil {
			t.Fatalf("Compile(%q): %v", cs, err)
		}
		if !Covers(c, c) {
			t.Fatalf("Covers(%q, %q) = false, want reflexive", cs, cs)
		}
		if !Covers(p, c) {
			continue
		}
		covered++
		for range 50 {
			n := randName(r)
			if c.Match(n) && !p.Match(n) {
				t.Fatalf("Covers(%q, %q) but %q matches the child only", ps, cs, n)
			}
		}
	}
	if covered < pairs/50 {
		t.Fatalf("only %d of %d random pairs covered; generator too weak to test anything", covered, pairs)
	}
}

// FuzzCovers drives the same soundness property with fuzzer-chosen inputs.
func FuzzCovers(f *testing.F) {
	f.Add("/a/**", "/a/b*", "/a/bc")
	f.Add("/a/*x*", "/a/ax*b", "/a/axzb")
	f.Add("**", "/a", "/a")
	f.Fuzz(func(t *testing.T, ps, cs, name string) {
		p, err := Compile(ps)
		if err != nil {
			return
		}
		c, err := Compile(cs)
		if err != nil {
			return
		}
		if Covers(p, c) && c.Match(name) && !p.Match(name) {
			t.Fatalf("Covers(%q, %q) but %q matches the child only", ps, cs, name)
		}
	})
}
