package mandate

import (
	"hash/maphash"
	"strings"
	"sync"
)

// verifyCache holds successful verifications. It is a fixed number of
// shards, each a map under its own lock with a size cap; a full shard evicts
// an expired entry if it meets one, or else an arbitrary one (Go's
// randomized map iteration order).
//
// Entries are filed under a 64-bit maphash of the token, with a seed that is
// random per Verifier (so callers cannot aim collisions), and hold a copy of
// the token itself: a hit requires the presented token to equal the stored
// one byte for byte. That makes a hit exact, like keying by a SHA-256
// digest, at a fraction of the cost (hashing an ~700-byte token with SHA-256
// costs several hundred nanoseconds; maphash plus a compare costs tens),
// for ~700 bytes more memory per entry.
//
// Why not ristretto: this cache gates a security decision, so a hit must be
// exact, while ristretto keeps only two 64-bit hashes of a key. A plain map
// also makes Set synchronous (ristretto's buffered Set may drop the fill, so
// a token could be verified twice in a row), Get allocation-free, and
// invalidation trivial: entries carry the key-set generation they were
// verified under, and a hit from another generation is treated as a miss.
type verifyCache struct {
	seed     maphash.Seed
	shards   [cacheShards]cacheShard
	perShard int
}

const cacheShards = 16

type cacheShard struct {
	mu sync.RWMutex
	m  map[uint64]*cacheEntry
}

// cacheEntry is immutable once stored.
type cacheEntry struct {
	token  string // exact token bytes that were verified
	claims *Claims
	gen    uint64 // key-set generation the signature was checked under
	// Validity bounds in Unix nanoseconds, skew already applied:
	// valid while from <= now < until. keyFrom/keyUntil are the signing
	// key's validity window.
	from, until       int64
	keyFrom, keyUntil int64
}

func newVerifyCache(size int) *verifyCache {
	per := max(size/cacheShards, 1)
	c := &verifyCache{seed: maphash.MakeSeed(), perShard: per}
	for i := range c.shards {
		c.shards[i].m = make(map[uint64]*cacheEntry, min(per, 1024))
	}
	return c
}

func (c *verifyCache) hash(token string) uint64 {
	return maphash.String(c.seed, token)
}

func (c *verifyCache) shard(h uint64) *cacheShard {
	return &c.shards[h>>60] // top bits: the map uses the low ones
}

// get returns the entry for exactly token, or nil.
func (c *verifyCache) get(h uint64, token string) *cacheEntry {
	s := c.shard(h)
	s.mu.RLock()
	e := s.m[h]
	s.mu.RUnlock()
	if e == nil || e.token != token {
		return nil
	}
	return e
}

// put stores e (whose token field it sets) under h.
func (c *verifyCache) put(h uint64, token string, e *cacheEntry, nowNanos int64) {
	e.token = strings.Clone(token) // do not pin the caller's buffer
	s := c.shard(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[h]; !ok && len(s.m) >= c.perShard {
		var victim uint64
		found, seen := false, 0
		for key, old := range s.m {
			if !found {
				victim, found = key, true
			}
			if old.until <= nowNanos {
				victim = key
				break
			}
			if seen++; seen >= 8 {
				break
			}
		}
		delete(s.m, victim)
	}
	s.m[h] = e
}

func (c *verifyCache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}
