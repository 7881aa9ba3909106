package pattern

import "strings"

// Covers reports whether every name that child matches is also matched by
// parent. It is conservative: it may answer false for some pairs where the
// inclusion holds, but it never answers true when child can match a name
// parent does not. Delegation uses it to prove that a narrowed scope is a
// subset of the scope it came from.
//
// The rules follow from the shape of a compiled pattern, a run of fixed
// segments optionally followed by "**":
//   - a child without "**" matches names of exactly len(child) segments; a
//     parent covers it if it has the same number of segments, or fewer
//     followed by "**", and each of those segments covers the child's;
//   - a child ending in "**" matches names of any length, so only a parent
//     ending in "**" with no more fixed segments than the child can cover it.
//
// A parent segment covers a child segment when the set of strings the child
// segment matches is a subset of the parent segment's: "*" covers every
// segment except the literal empty one; a literal covers only the same
// literal; a glob covers a literal it matches, and a glob whose source it
// matches when the child's '*' characters can only be absorbed by the
// parent's own '*' wildcards (the parent's literal parts never contain '*').
//
// The zero Pattern matches nothing, so it is covered by every pattern and
// covers only another zero Pattern.
func Covers(parent, child Pattern) bool {
	if child.raw == "" {
		return true
	}
	if parent.raw == "" {
		return false
	}
	np, nc := len(parent.segs), len(child.segs)
	switch {
	case child.trailing:
		if !parent.trailing || np > nc {
			return false
		}
	case parent.trailing:
		if np > nc {
			return false
		}
	default:
		if np != nc {
			return false
		}
	}
	for i := range np {
		if !segCovers(parent.segs[i], child.segs[i]) {
			return false
		}
	}
	return true
}

// segCovers reports whether every string c matches is matched by p.
func segCovers(p, c segment) bool {
	switch p.kind {
	case segAny:
		// "*" matches every non-empty segment. Literals may be empty; globs
		// always hold at least one literal byte, so never match "".
		if c.kind == segLiteral {
			return c.lit != ""
		}
		return true
	case segLiteral:
		return c.kind == segLiteral && c.lit == p.lit
	default: // segGlob
		switch c.kind {
		case segLiteral:
			return globMatch(p.parts, c.lit)
		case segAny:
			return false
		default:
			// Match the child's source text, '*' included, against the
			// parent glob. The parent's literal parts contain no '*', so
			// each child wildcard falls inside a parent wildcard's span and
			// can be replaced by any run without breaking the match.
			return globMatch(p.parts, strings.Join(c.parts, "*"))
		}
	}
}
