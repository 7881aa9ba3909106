// Package pattern matches slash-separated names, such as SPIFFE IDs and
// URL paths, against glob patterns.
//
// A pattern is split on '/'. A segment "*" matches exactly one non-empty
// segment; a final segment "**" matches zero or more segments; a segment
// holding '*' among other characters ("agent-*") matches one segment with
// '*' standing for any run of characters. Every other segment matches
// itself exactly. "**" is allowed only as the last segment, so matching is
// linear in the length of the name.
package pattern

import (
	"errors"
	"fmt"
	"strings"
)

// Pattern is a compiled glob pattern. The zero value matches nothing.
type Pattern struct {
	raw      string
	segs     []segment
	trailing bool // ends in "**"
	literal  bool // IsLiteral: matches raw only
}

type segKind uint8

const (
	segLiteral segKind = iota
	segAny             // "*"
	segGlob            // literal parts around '*'
)

type segment struct {
	kind  segKind
	lit   string
	parts []string // segGlob: the literal parts between '*'
}

// ErrInvalid is wrapped by every error Compile returns.
var ErrInvalid = errors.New("pattern: invalid pattern")

// Compile parses a pattern.
func Compile(p string) (Pattern, error) {
	if p == "" {
		return Pattern{}, fmt.Errorf("%w: empty", ErrInvalid)
	}
	if strings.ContainsAny(p, "?#[]") {
		return Pattern{}, fmt.Errorf("%w %q: '?', '#', '[' and ']' are not allowed", ErrInvalid, p)
	}
	raw := strings.Split(p, "/")
	out := Pattern{raw: p, segs: make([]segment, 0, len(raw))}
	for i, s := range raw {
		switch {
		case s == "**":
			if i != len(raw)-1 {
				return Pattern{}, fmt.Errorf("%w %q: \"**\" must be the last segment", ErrInvalid, p)
			}
			out.trailing = true
		case strings.Contains(s, "**"):
			return Pattern{}, fmt.Errorf("%w %q: \"**\" must be a whole segment", ErrInvalid, p)
		case s == "*":
			out.segs = append(out.segs, segment{kind: segAny})
		case strings.Contains(s, "*"):
			out.segs = append(out.segs, segment{kind: segGlob, parts: strings.Split(s, "*")})
		default:
			out.segs = append(out.segs, segment{kind: segLiteral, lit: s})
		}
	}
	out.literal = out.IsLiteral()
	return out, nil
}

// MustCompile is Compile for patterns known at build time; it panics on error.
func MustCompile(p string) Pattern {
	pt, err := Compile(p)
	if err != nil {
		panic(err)
	}
	return pt
}

// String returns the pattern's source.
func (p Pattern) String() string { return p.raw }

// IsLiteral reports whether the pattern matches exactly one name.
func (p Pattern) IsLiteral() bool {
	if p.trailing || p.raw == "" {
		return false
	}
	for _, s := range p.segs {
		if s.kind != segLiteral {
			return false
		}
	}
	return true
}

// LiteralPrefix returns the leading segments that are plain literals, the
// key under which an index can file the pattern. For
// "spiffe://example.org/agents/*" it returns ["spiffe:", "", "example.org",
// "agents"].
func (p Pattern) LiteralPrefix() []string {
	out := make([]string, 0, len(p.segs))
	for _, s := range p.segs {
		if s.kind != segLiteral {
			break
		}
		out = append(out, s.lit)
	}
	return out
}

// Match reports whether name matches the pattern. A literal pattern
// matches its own text only (one compare instead of a walk over the
// segments: FuzzMatch checks they agree).
func (p Pattern) Match(name string) bool {
	if p.literal {
		return name == p.raw
	}
	return p.matchSegments(name)
}

// matchSegments matches name against the pattern segment by segment.
func (p Pattern) matchSegments(name string) bool {
	if p.raw == "" {
		return false
	}
	rest := name
	for i, s := range p.segs {
		var seg string
		last := false
		if j := strings.IndexByte(rest, '/'); j >= 0 {
			seg, rest = rest[:j], rest[j+1:]
		} else {
			seg, last = rest, true
			rest = ""
		}
		if !s.match(seg) {
			return false
		}
		if last {
			// The name ran out: it matches only if the pattern did too,
			// or what remains is a trailing "**" (zero segments).
			return i == len(p.segs)-1
		}
	}
	// Pattern segments used up, name has more.
	return p.trailing
}

func (s segment) match(seg string) bool {
	switch s.kind {
	case segLiteral:
		return seg == s.lit
	case segAny:
		return seg != ""
	default:
		return globMatch(s.parts, seg)
	}
}

// globMatch matches seg against parts joined by '*' wildcards.
func globMatch(parts []string, seg string) bool {
	first, last := parts[0], parts[len(parts)-1]
	if len(seg) < len(first)+len(last) || !strings.HasPrefix(seg, first) || !strings.HasSuffix(seg, last) {
		return false
	}
	mid := seg[len(first) : len(seg)-len(last)]
	for _, part := range parts[1 : len(parts)-1] {
		k := strings.Index(mid, part)
		if k < 0 {
			return false
		}
		mid = mid[k+len(part):]
	}
	return true
}
