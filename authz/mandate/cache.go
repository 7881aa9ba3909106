package mandate

import (
	"sync"
)

// verifyCache holds successful verifications, keyed by the SHA-256 digest of
// the token. It is a fixed number of shards, each a map under its own lock
// with a size cap; a full shard evicts an expired entry if it meets one, or
// else an arbitrary one (Go's randomized map iteration order).
//
// Why not ristretto: this cache gates a security decision, so a hit must be
// exact. Keying by the full 32-byte digest makes a hit mean "these exact
// bytes were verified"; ristretto keeps only two 64-bit hashes of a key. A
// plain map also makes Set synchronous (ristretto's buffered Set may drop the
// fill, so a token could be verified twice in a row), Get allocation-free,
// and invalidation trivial: entries carry the key-set generation they were
// verified under, and a hit from another generation is treated as a miss.
type verifyCache struct {
	shards   [cacheShards]cacheShard
	perShard int
}

const cacheShards = 16

type cacheShard struct {
	mu sync.RWMutex
	m  map[[32]byte]*cacheEntry
}

// cacheEntry is immutable once stored.
type cacheEntry struct {
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
	c := &verifyCache{perShard: per}
	for i := range c.shards {
		c.shards[i].m = make(map[[32]byte]*cacheEntry, min(per, 1024))
	}
	return c
}

func (c *verifyCache) shard(k *[32]byte) *cacheShard {
	return &c.shards[k[0]%cacheShards]
}

func (c *verifyCache) get(k *[32]byte) *cacheEntry {
	s := c.shard(k)
	s.mu.RLock()
	e := s.m[*k]
	s.mu.RUnlock()
	return e
}

func (c *verifyCache) put(k *[32]byte, e *cacheEntry, nowNanos int64) {
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[*k]; !ok && len(s.m) >= c.perShard {
		var victim [32]byte
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
	s.m[*k] = e
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
