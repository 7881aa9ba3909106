package revocation

import (
	"hash/maphash"
	"math/bits"
	"slices"
)

// trie is a persistent hash array mapped trie from a string key to a
// value V, laid out as a CHAMP (compressed hash-array mapped prefix
// tree): each node keeps its leaves and its children in two dense
// arrays of pointers, 8 bytes a slot. A trie value is never changed once
// a Set holding it is published: an edit copies the nodes on the path to
// the key it changes and shares every other node, and every leaf, with
// the trie it came from. Within one edit (one With call) nodes the edit
// created itself are changed in place, so a batch of changes copies each
// node at most once.
//
// A leaf holds its value inline (for the ID index, the whole compiled
// record; for the value indexes, a bucket whose single record needs no
// array of its own), so a record costs the garbage collector few
// objects. Leaves are immutable: a changed key gets a new leaf, so a
// pointer into a leaf's value stays valid for as long as it is held.
//
// Lookups hash the key with maphash (no allocation) and walk at most
// thirteen levels of 32-way nodes; in practice three or four. The shape
// depends only on the keys held: a node left holding a single leaf
// and no children is folded into its parent.
type trie[V any] struct {
	root *tnode[V]
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

type tnode[V any] struct {
	owner    *edit
	datamap  uint32 // the slots holding a leaf
	nodemap  uint32 // the slots holding a child
	leaves   []*tleaf[V]
	children []*tnode[V]
	// coll holds the leaves whose 64-bit hashes are all equal, in a node
	// below the last level the hash can index.
	coll []*tleaf[V]
}

type tleaf[V any] struct {
	hash uint64
	key  string
	val  V
}

// index returns the position of bit among the set bits of m below it.
func index(m, bit uint32) int { return bits.OnesCount32(m & (bit - 1)) }

func (t *trie[V]) get(seed maphash.Seed, key string) *tleaf[V] {
	if t.root == nil {
		return nil
	}
	return t.getH(maphash.String(seed, key), key)
}

// getH returns key's leaf, or nil.
func (t *trie[V]) getH(h uint64, key string) *tleaf[V] {
	n := t.root
	if n == nil {
		return nil
	}
	for shift := uint(0); ; shift += tbits {
		if shift >= 64 {
			for _, l := range n.coll {
				if l.key == key {
					return l
				}
			}
			return nil
		}
		bit := uint32(1) << ((h >> shift) & tmask)
		if n.datamap&bit != 0 {
			l := n.leaves[index(n.datamap, bit)]
			if l.hash == h && l.key == key {
				return l
			}
			return nil
		}
		if n.nodemap&bit == 0 {
			return nil
		}
		n = n.children[index(n.nodemap, bit)]
	}
}

// putH sets key's value to val and returns its (new) leaf.
func (t *trie[V]) putH(ed *edit, h uint64, key string, val V) *tleaf[V] {
	l := &tleaf[V]{hash: h, key: key, val: val}
	var delta int
	t.root = t.assoc(ed, t.root, 0, l, &delta)
	t.n += delta
	return l
}

// deleteH removes key, if held.
func (t *trie[V]) deleteH(ed *edit, h uint64, key string) {
	var delta int
	t.root = t.remove(ed, t.root, 0, h, key, &delta)
	t.n += delta
}

// own returns n itself when ed created it, else a copy owned by ed.
func own[V any](ed *edit, n *tnode[V]) *tnode[V] {
	if n.owner == ed {
		return n
	}
	c := &tnode[V]{owner: ed, datamap: n.datamap, nodemap: n.nodemap}
	if n.leaves != nil {
		c.leaves = append(make([]*tleaf[V], 0, len(n.leaves)+1), n.leaves...)
	}
	if n.children != nil {
		c.children = append(make([]*tnode[V], 0, len(n.children)+1), n.children...)
	}
	if n.coll != nil {
		c.coll = append(make([]*tleaf[V], 0, len(n.coll)+1), n.coll...)
	}
	return c
}

func (t *trie[V]) assoc(ed *edit, n *tnode[V], shift uint, l *tleaf[V], delta *int) *tnode[V] {
	if n == nil {
		n = &tnode[V]{owner: ed}
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
	switch {
	case n.datamap&bit != 0:
		i := index(n.datamap, bit)
		old := n.leaves[i]
		if old.hash == l.hash && old.key == l.key {
			n.leaves[i] = l
			return n
		}
		// Two keys share this slot: push both one level down.
		child := t.assoc(ed, nil, shift+tbits, old, new(int))
		child = t.assoc(ed, child, shift+tbits, l, delta)
		n.leaves = slices.Delete(n.leaves, i, i+1)
		n.datamap &^= bit
		n.nodemap |= bit
		j := index(n.nodemap, bit)
		n.children = append(n.children, nil)
		copy(n.children[j+1:], n.children[j:])
		n.children[j] = child
	case n.nodemap&bit != 0:
		j := index(n.nodemap, bit)
		n.children[j] = t.assoc(ed, n.children[j], shift+tbits, l, delta)
	default:
		i := index(n.datamap, bit)
		n.leaves = append(n.leaves, nil)
		copy(n.leaves[i+1:], n.leaves[i:])
		n.leaves[i] = l
		n.datamap |= bit
		*delta = 1
	}
	return n
}

// lone returns the single leaf n holds when it holds nothing else.
func (n *tnode[V]) lone() *tleaf[V] {
	switch {
	case len(n.children) == 0 && len(n.leaves) == 1 && len(n.coll) == 0:
		return n.leaves[0]
	case len(n.children) == 0 && len(n.leaves) == 0 && len(n.coll) == 1:
		return n.coll[0]
	}
	return nil
}

// remove deletes key below n and returns the node that replaces n (nil
// when it became empty; a lone leaf is pulled up by the caller).
func (t *trie[V]) remove(ed *edit, n *tnode[V], shift uint, h uint64, key string, delta *int) *tnode[V] {
	if n == nil {
		return nil
	}
	if shift >= 64 {
		for i, l := range n.coll {
			if l.key == key {
				n = own(ed, n)
				n.coll = slices.Delete(n.coll, i, i+1)
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
	switch {
	case n.datamap&bit != 0:
		i := index(n.datamap, bit)
		if l := n.leaves[i]; l.hash != h || l.key != key {
			return n
		}
		*delta = -1
		n = own(ed, n)
		n.leaves = slices.Delete(n.leaves, i, i+1)
		n.datamap &^= bit
		if n.datamap == 0 && n.nodemap == 0 {
			return nil
		}
		return n
	case n.nodemap&bit != 0:
		j := index(n.nodemap, bit)
		old := n.children[j]
		c := t.remove(ed, old, shift+tbits, h, key, delta)
		if c == old && *delta == 0 {
			return n
		}
		n = own(ed, n)
		var up *tleaf[V]
		if c != nil {
			up = c.lone()
		}
		if c != nil && up == nil {
			n.children[j] = c
			return n
		}
		n.children = slices.Delete(n.children, j, j+1)
		n.nodemap &^= bit
		if up != nil {
			// A child left holding a single leaf is replaced by it, so
			// the trie's shape depends only on the keys it holds.
			i := index(n.datamap, bit)
			n.leaves = append(n.leaves, nil)
			copy(n.leaves[i+1:], n.leaves[i:])
			n.leaves[i] = up
			n.datamap |= bit
		}
		if n.datamap == 0 && n.nodemap == 0 {
			return nil
		}
		return n
	}
	return n
}

// each calls f for every leaf, in no particular order.
func (t *trie[V]) each(f func(l *tleaf[V])) {
	var walk func(n *tnode[V])
	walk = func(n *tnode[V]) {
		if n == nil {
			return
		}
		for _, l := range n.coll {
			f(l)
		}
		for _, l := range n.leaves {
			f(l)
		}
		for _, c := range n.children {
			walk(c)
		}
	}
	walk(t.root)
}
