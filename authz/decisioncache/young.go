package decisioncache

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// A decision enters ristretto only once it is asked for again: a miss
// stores it in the young table, a small set-associative table of exact
// keys, and a hit there (the second request for it) or a later miss of
// the same key within the TTL (the door remembers its first) moves it to
// ristretto. Decisions asked for once, such as MCP tool calls with
// arguments never repeated, then cost a young slot instead of
// ristretto's insert (two hashes, an item, a channel send, and, in a full
// cache, the sampling and eviction of another entry on its goroutine),
// and they do not evict from ristretto the decisions that are asked for
// again. Whatever table answers, an entry is served only under its exact
// key, its epoch and before its expiry: these tables decide what is
// remembered, never what is served.

const (
	// youngWays entries per set: a few keys that share a set all stay
	// (a direct-mapped table would drop one of any two that collide).
	youngWays = 4
	youngSets = 1024
	// doorUnit is the door's clock resolution (16.8 ms).
	doorUnit = 24
)

// youngSet is one set of the young table, one cache line; tags (the key
// hash, never 0) let a lookup compare the keys of the entries that may
// match only.
type youngSet struct {
	tags    [youngWays]atomic.Uint64
	entries [youngWays]atomic.Pointer[frontEntry]
}

// doorSlot is one slot of the door, chosen by key hash: seen remembers
// the last key stored young here and when (tag and time), until bounds
// the expiry of every entry set in ristretto under a key of this slot,
// so a lookup after it skips ristretto (nothing there can be served).
type doorSlot struct {
	seen  atomic.Uint64
	until atomic.Int64
}

func youngTag(h uint64) uint64 { return h | 1 }

// youngGet returns the young entry of key (hash h), if any.
func (c *Cache) youngGet(key []byte, h uint64) *frontEntry {
	s := &c.young[(h>>32)%youngSets]
	t := youngTag(h)
	for w := range s.tags {
		if s.tags[w].Load() != t {
			continue
		}
		if f := s.entries[w].Load(); f != nil && f.key == string(key) {
			return f
		}
	}
	return nil
}

// youngPut stores e under key (hash h): in the way that holds key, else
// in an empty one, else in the ways in turn. It reads no entry of
// another key (each would be a read from cold memory): a young entry
// that is no longer valid is replaced in its turn. promoted: e is in
// ristretto already.
func (c *Cache) youngPut(key []byte, h uint64, e *Entry, promoted bool) {
	i := (h >> 32) % youngSets
	s := &c.young[i]
	t := youngTag(h)
	way := -1
	for w := range s.entries {
		if s.entries[w].Load() == nil {
			way = w
			break
		}
		if s.tags[w].Load() == t {
			if f := s.entries[w].Load(); f != nil && f.key == string(key) {
				way = w
				break
			}
		}
	}
	if way < 0 {
		way = int(c.youngNext[i].Add(1) % youngWays)
	}
	f := &frontEntry{key: string(key), e: e}
	f.promoted.Store(promoted)
	s.entries[way].Store(f)
	s.tags[way].Store(t)
}

// door returns key hash h's door slot.
func (c *Cache) door(h uint64) *doorSlot { return &c.doors[h&c.doorMask] }

// seenRecently reports whether a key of hash h was stored young within
// the TTL; otherwise it notes that it is now.
func (c *Cache) seenRecently(d *doorSlot, h uint64, now time.Time) bool {
	t := uint64(uint32(now.UnixNano() >> doorUnit))
	tag := h >> 32
	prev := d.seen.Swap(tag<<32 | t)
	return prev>>32 == tag && uint32(t-prev) <= c.doorTTL
}

// raiseUntil makes d's until at least exp.
func raiseUntil(d *doorSlot, exp time.Time) {
	n := exp.UnixNano()
	for {
		u := d.until.Load()
		if u >= n || d.until.CompareAndSwap(u, n) {
			return
		}
	}
}

// doorSize is the number of door slots for a cache of maxEntries: a power
// of two, at least maxEntries within [1,024, 1,048,576].
func doorSize(maxEntries int64) int {
	n := min(max(maxEntries, 1024), 1<<20)
	return 1 << bits.Len64(uint64(n-1))
}
