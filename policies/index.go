package policies

import (
	"slices"
	"strings"
)

// The subject index is a trie over the '/'-separated segments of SPIFFE
// IDs. A rule is filed under each subject pattern's literal prefix: in
// the node's exact list when the pattern is fully literal, else in its
// prefix list. A lookup walks the subject's segments once, collecting
// the prefix lists of every node on the way and the exact list of the
// node the subject ends on, so its cost depends on the subject's depth
// and on how many rules could match it, not on the size of the set.
type trieNode struct {
	children map[string]*trieNode
	prefix   []int32
	exact    []int32
}

func buildTrie(rules []rule) *trieNode {
	root := &trieNode{}
	for id := range rules {
		for _, p := range rules[id].subjects {
			n := root
			for _, seg := range p.LiteralPrefix() {
				child := n.children[seg]
				if child == nil {
					if n.children == nil {
						n.children = map[string]*trieNode{}
					}
					child = &trieNode{}
					n.children[seg] = child
				}
				n = child
			}
			list := &n.prefix
			if p.IsLiteral() {
				list = &n.exact
			}
			// Rules are filed in id order, so a rule listed twice under
			// one node (two subjects, same prefix) is adjacent.
			if l := *list; len(l) == 0 || l[len(l)-1] != int32(id) {
				*list = append(*list, int32(id))
			}
		}
	}
	return root
}

// candidates appends to buf the ids of the rules whose subject patterns
// may match subject, sorted and without duplicates.
func (n *trieNode) candidates(subject string, buf []int32) []int32 {
	buf = append(buf, n.prefix...)
	rest := subject
	for {
		seg, tail, more := strings.Cut(rest, "/")
		child := n.children[seg]
		if child == nil {
			break
		}
		buf = append(buf, child.prefix...)
		if !more {
			buf = append(buf, child.exact...)
			break
		}
		n, rest = child, tail
	}
	if len(buf) > 1 {
		slices.Sort(buf)
		buf = slices.Compact(buf)
	}
	return buf
}
