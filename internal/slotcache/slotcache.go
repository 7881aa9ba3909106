// Package slotcache is a direct-mapped cache of immutable entries: a
// fixed array of slots, each holding one entry, chosen by a keyed hash of
// a string; a new entry evicts whatever its slot held. Callers store the
// exact inputs in their entries and compare them on lookup, so a hit is
// exact and a collision (even one an attacker arranges) only costs a
// miss. Safe for concurrent use.
package slotcache

import (
	"hash/maphash"
	"sync/atomic"
)

// Cache holds entries of type E.
type Cache[E any] struct {
	seed  maphash.Seed
	slots []atomic.Pointer[E]
	// seen holds, per slot, the hash of the last key SeenTwice was
	// asked about there.
	seen []atomic.Uint64
}

// New returns a cache of n slots (n > 0).
func New[E any](n int) *Cache[E] {
	return &Cache[E]{seed: maphash.MakeSeed(), slots: make([]atomic.Pointer[E], n), seen: make([]atomic.Uint64, n)}
}

// Slot returns the slot of key, offset by extra (another input of the
// entry, cheaper than hashing it), and the hash that chose it.
func (c *Cache[E]) Slot(key string, extra uint64) (*atomic.Pointer[E], uint64) {
	h := maphash.String(c.seed, key) + extra
	return &c.slots[h%uint64(len(c.slots))], h
}

// SeenTwice reports whether h (from Slot) is the hash SeenTwice was last
// asked about in its slot, and records it. A caller that stores an entry
// only when its key is seen twice in a row pays no allocation for a
// stream of distinct keys.
func (c *Cache[E]) SeenTwice(h uint64) bool {
	return c.seen[h%uint64(len(c.seen))].Swap(h) == h
}
