package revocation

import (
	"hash/maphash"
	"math/bits"
)

// trie is a persistent hash array mapped trie from a string key to a
// bucket of compiled records. A trie value is never changed once a Set
// holding it is published: an edit copies the nodes on the path to the
// key it changes and shares every other node with the trie it came from.
// Within one edit (one With call) nodes the edit created itself are
// changed in place, so a batch of changes copies each node at most once.
//
// Lookups hash the key with maphash (no allocation) and walk at most
// thirteen levels of 32-way nodes; in practice three or four.
type trie struct {
	root *tnode
	n    int // number of keys
}

const (
	tbits  = 5
	twidth = 1 << tbits
	tmask  = twidth - 1
)

// edit marks the nodes created by one editing session: only those may be
// changed in place.
type edit struct{ _ byte }

type tnode struct {
	owner  *edit
	bitmap uint32
	slots  []tslot
	// coll holds the leaves whose 64-bit hashes are all equal, in a node
	// below the last level the hash can index.
	coll []*tleaf
}

// tslot is either a child node or a leaf.
type tslot struct {
	child *tnode
	leaf  *tleaf
}

type tleaf struct {
	hash uint64
	key  string
	vals []*compiled
}

func (t *trie) get(seed maphash.Seed, key string) []*compiled {
	if t.root == nil {
		return nil
	}
	return t.getH(maphash.String(seed, key), key)
}

func (t *trie) getH(h uint64, key string) []*compiled {
	n := t.root
	if n == nil {
		return nil
	}
	for shift := uint(0); ; shift += tbits {
		if shift >= 64 {
			for _, l := range n.coll {
				if l.key == key {
					return l.vals
				}
			}
			return nil
		}
		bit := uint32(1) << ((h >> shift) & tmask)
		if n.bitmap&bit == 0 {
			return nil
		}
		s := &n.slots[bits.OnesCount32(n.bitmap&(bit-1))]
		if s.child != nil {
			n = s.child
			continue
		}
		if s.leaf.hash == h && s.leaf.key == key {
			return s.leaf.vals
		}
		return nil
	}
}

// put sets key's bucket to vals in place of the old one; an empty vals
// removes the key.
func (t *trie) put(ed *edit, seed maphash.Seed, key string, vals []*compiled) {
	t.putH(ed, maphash.String(seed, key), key, vals)
}

func (t *trie) putH(ed *edit, h uint64, key string, vals []*compiled) {
	var delta int
	if len(vals) == 0 {
		t.root = t.remove(ed, t.root, 0, h, key, &delta)
	} else {
		t.root = t.assoc(ed, t.root, 0, &tleaf{hash: h, key: key, vals: vals}, &delta)
	}
	t.n += delta
}

// own returns n itself when ed created it, else a copy owned by ed.
func own(ed *edit, n *tnode) *tnode {
	if n.owner == ed {
		return n
	}
	c := &tnode{owner: ed, bitmap: n.bitmap}
	if n.slots != nil {
		c.slots = make([]tslot, len(n.slots), len(n.slots)+1)
		copy(c.slots, n.slots)
	}
	if n.coll != nil {
		c.coll = append(make([]*tleaf, 0, len(n.coll)+1), n.coll...)
	}
	return c
}

func (t *trie) assoc(ed *edit, n *tnode, shift uint, l *tleaf, delta *int) *tnode {
	if n == nil {
		n = &tnode{owner: ed}
	} else {
		n = own(ed, n)
	}
	if shift >= 64 {
		for i, old := range n.coll {
			if old.key == l.key {
				n.coll[i] = l
				return n
			}
		}
		n.coll = append(n.coll, l)
		*delta = 1
		return n
	}
	bit := uint32(1) << ((l.hash >> shift) & tmask)
	i := bits.OnesCount32(n.bitmap & (bit - 1))
	if n.bitmap&bit == 0 {
		n.slots = append(n.slots, tslot{})
		copy(n.slots[i+1:], n.slots[i:])
		n.slots[i] = tslot{leaf: l}
		n.bitmap |= bit
		*delta = 1
		return n
	}
	s := n.slots[i]
	switch {
	case s.child != nil:
		n.slots[i] = tslot{child: t.assoc(ed, s.child, shift+tbits, l, delta)}
	case s.leaf.key == l.key:
		n.slots[i] = tslot{leaf: l}
	default:
		// Two keys share this slot: push both one level down.
		child := t.assoc(ed, nil, shift+tbits, s.leaf, new(int))
		child = t.assoc(ed, child, shift+tbits, l, delta)
		n.slots[i] = tslot{child: child}
	}
	return n
}

// remove deletes key below n and returns the node that replaces n (nil
// when it became empty; a lone leaf is pulled up by the caller).
func (t *trie) remove(ed *edit, n *tnode, shift uint, h uint64, key string, delta *int) *tnode {
	if n == nil {
		return nil
	}
	if shift >= 64 {
		for i, l := range n.coll {
			if l.key == key {
				n = own(ed, n)
				n.coll = append(n.coll[:i], n.coll[i+1:]...)
				*delta = -1
				if len(n.coll) == 0 {
					return nil
				}
				return n
			}
		}
		return n
	}
	bit := uint32(1) << ((h >> shift) & tmask)
	if n.bitmap&bit == 0 {
		return n
	}
	i := bits.OnesCount32(n.bitmap & (bit - 1))
	s := n.slots[i]
	var repl tslot
	switch {
	case s.child != nil:
		c := t.remove(ed, s.child, shift+tbits, h, key, delta)
		if c == s.child {
			return n
		}
		if c != nil {
			repl = tslot{child: c}
			// A child left holding a single leaf is replaced by it, so
			// the trie's shape depends only on the keys it holds.
			if len(c.slots) == 1 && c.slots[0].leaf != nil {
				repl = tslot{leaf: c.slots[0].leaf}
			}
		}
	case s.leaf.hash == h && s.leaf.key == key:
		*delta = -1
	default:
		return n
	}
	n = own(ed, n)
	if repl.child == nil && repl.leaf == nil {
		n.slots = append(n.slots[:i], n.slots[i+1:]...)
		n.bitmap &^= bit
		if len(n.slots) == 0 {
			return nil
		}
		return n
	}
	n.slots[i] = repl
	return n
}

// each calls f for every key and bucket, in no particular order.
func (t *trie) each(f func(key string, vals []*compiled)) {
	var walk func(n *tnode)
	walk = func(n *tnode) {
		if n == nil {
			return
		}
		for _, l := range n.coll {
			f(l.key, l.vals)
		}
		for _, s := range n.slots {
			if s.child != nil {
				walk(s.child)
			} else {
				f(s.leaf.key, s.leaf.vals)
			}
		}
	}
	walk(t.root)
}
