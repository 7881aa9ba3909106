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
}

// New returns a cache of n slots (n > 0).
func New[E any](n int) *Cache[E] {
	return &Cache[E]{seed: maphash.MakeSeed(), slots: make([]atomic.Pointer[E], n)}
}

// Slot returns the slot of key, offset by extra (another input of the
// entry, cheaper than hashing it).
func (c *Cache[E]) Slot(key string, extra uint64) *atomic.Pointer[E] {
	return &c.slots[(maphash.String(c.seed, key)+extra)%uint64(len(c.slots))]
}
