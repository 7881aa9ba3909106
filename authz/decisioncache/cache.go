// Package decisioncache keeps recent authorization decisions for a short
// time, keyed on every input the decision read.
//
// Keys are built with a Key builder that length-prefixes each field, so two
// different inputs can never produce the same byte string. Every entry is
// tagged with the state epoch it was computed under and its own expiry; a
// lookup under a newer epoch, or after the expiry, is a miss. That closes
// the race in which a fill computed before a revocation lands in the cache
// after it: the fill carries the old epoch and is never served again.
package decisioncache

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/ristretto/v2"
)

// Entry is a cached decision.
type Entry struct {
	Effect uint8
	Policy string
	Rule   string
	Reason string
	DryRun string // "policy/rule=effect" of the dry-run match, or ""
	// AllowedIfApproved: a step_up decision an approval may lift.
	AllowedIfApproved bool
	// ArgumentKeys, AllArguments: the MCP arguments the deciding rule
	// read (policies.Decision); shared, never modified.
	ArgumentKeys []string
	AllArguments bool
	// HeaderKeys, AllHeaders: the headers the deciding rule read.
	HeaderKeys []string
	AllHeaders bool
	Epoch      uint64
	Expires    time.Time

	// memo is what the cache's user derived from this entry (Memo).
	memo atomic.Value
}

// Memo returns what SetMemo stored on e, or nil.
func (e *Entry) Memo() any { return e.memo.Load() }

// SetMemo stores v on e for later hits to share: something derived from
// the entry once (metric handles, response parts) instead of on every
// hit. v must be immutable once stored, and always of the same type.
func (e *Entry) SetMemo(v any) { e.memo.Store(v) }

// Config sizes the cache.
type Config struct {
	// MaxEntries bounds the number of decisions kept (approximately).
	MaxEntries int64
	// TTL is how long a decision is kept at most.
	TTL time.Duration
}

// Cache is a bounded, TTL-limited decision cache. A nil *Cache is valid
// and caches nothing.
//
// In front of ristretto sits a small direct-mapped table of hit entries
// (the exact key and the entry, eviction by collision), filled when a
// ristretto hit finds its slot free or stale (so a decision that is never
// asked for again costs it nothing): a hot decision is then served with
// one hash and one compare, without ristretto's two hashes, shard lock
// and access bookkeeping. It applies the same epoch and expiry checks.
type Cache struct {
	c     *ristretto.Cache[[]byte, *Entry]
	ttl   time.Duration
	seed  maphash.Seed
	front [frontSlots]atomic.Pointer[frontEntry]
	// stats counts lookups and dropped sets, sharded by key hash.
	// Ristretto's own metrics stay off: besides its counters they time
	// every admission and eviction (a clock read, a map of admission
	// times and a locked histogram per miss), on the goroutine that
	// applies sets.
	stats [statShards]counts
	// young and doors keep decisions asked for once out of ristretto
	// (young.go).
	young     []youngSet               // youngSets, allocated alone: whole pages, so each set is one cache line
	youngNext [youngSets]atomic.Uint32 // per set, the way the next insert replaces when all hold valid entries
	doors     []doorSlot
	doorMask  uint64
	doorTTL   uint32 // the TTL in door clock units, rounded up
}

const (
	frontSlots = 2048
	statShards = 8
)

type frontEntry struct {
	key string
	e   *Entry
	// promoted: a young entry that was asked for again and set in
	// ristretto (young.go).
	promoted atomic.Bool
}

// counts is one shard of Cache.stats, on its own cache line.
type counts struct {
	hits, misses, dropped atomic.Uint64
	_                     [40]byte
}

// New returns a Cache.
func New(cfg Config) (*Cache, error) {
	if cfg.MaxEntries <= 0 {
		return nil, errors.New("decisioncache: MaxEntries must be positive")
	}
	if cfg.TTL <= 0 {
		return nil, errors.New("decisioncache: TTL must be positive")
	}
	c, err := ristretto.NewCache(&ristretto.Config[[]byte, *Entry]{
		NumCounters:        cfg.MaxEntries * 10,
		MaxCost:            cfg.MaxEntries,
		BufferItems:        64,
		IgnoreInternalCost: true,
	})
	if err != nil {
		return nil, fmt.Errorf("decisioncache: %w", err)
	}
	n := doorSize(cfg.MaxEntries)
	return &Cache{c: c, ttl: cfg.TTL, seed: maphash.MakeSeed(), young: make([]youngSet, youngSets), doors: make([]doorSlot, n), doorMask: uint64(n - 1),
		doorTTL: uint32(min((cfg.TTL+1<<doorUnit-1)>>doorUnit, 1<<31))}, nil
}

// Get returns the decision stored under key, if it was computed under
// epoch and has not expired at now (the decision's clock).
func (c *Cache) Get(key []byte, epoch uint64, now time.Time) (*Entry, bool) {
	if c == nil {
		return nil, false
	}
	h := maphash.Bytes(c.seed, key)
	slot := &c.front[h%frontSlots]
	f := slot.Load()
	st := &c.stats[h%statShards]
	if f != nil && f.key == string(key) && f.e.valid(epoch, now) {
		st.hits.Add(1)
		return f.e, true
	}
	var e *Entry
	y := c.youngGet(key, h)
	if y != nil && y.e.valid(epoch, now) {
		e = y.e
		if !y.promoted.Load() && !y.promoted.Swap(true) {
			c.setOld(key, h, e) // asked for again: worth ristretto's insert now
		}
	} else {
		// Ristretto is asked only when it may hold an entry to serve.
		if now.UnixNano() >= c.door(h).until.Load() {
			st.misses.Add(1)
			return nil, false
		}
		var ok bool
		if e, ok = c.c.Get(key); !ok || !e.valid(epoch, now) {
			st.misses.Add(1)
			return nil, false
		}
		y = nil
	}
	st.hits.Add(1)
	if f == nil || !f.e.valid(epoch, now) {
		if y == nil {
			y = &frontEntry{key: string(key), e: e}
		}
		// A young entry is immutable but for promoted, which the front
		// does not read: it serves as the front entry as it is.
		slot.Store(y)
	}
	return e, true
}

// valid reports whether e may be served under epoch at now.
func (e *Entry) valid(epoch uint64, now time.Time) bool {
	return e.Epoch == epoch && now.Before(e.Expires)
}

// Set stores e under key. The entry expires after the cache's TTL or at
// notAfter (for example the mandate's expiry), whichever comes first; a
// zero notAfter means no extra limit. now is the decision's clock. Set
// may drop the entry under load.
func (c *Cache) Set(key []byte, e *Entry, notAfter, now time.Time) {
	if c == nil {
		return
	}
	exp := now.Add(c.ttl)
	if !notAfter.IsZero() && notAfter.Before(exp) {
		exp = notAfter
	}
	if !exp.After(now) {
		return
	}
	e.Expires = exp
	// Get checks Expires itself, so ristretto's own TTL bookkeeping (an
	// expiration map updated on every Set) is not needed.
	h := maphash.Bytes(c.seed, key)
	slot := &c.front[h%frontSlots]
	f := slot.Load()
	switch {
	case f != nil && f.key == string(key):
		// The front table keeps no older entry of this key than
		// ristretto.
		c.setOld(key, h, e)
		slot.Store(&frontEntry{key: f.key, e: e})
	default:
		// Young either way, so the next lookup finds it at once
		// (ristretto applies sets on its own goroutine).
		again := c.seenRecently(c.door(h), h, now)
		if again {
			c.setOld(key, h, e) // asked for again, and no longer young
		}
		c.youngPut(key, h, e, again)
	}
}

// setOld stores e under key (hash h) in ristretto.
func (c *Cache) setOld(key []byte, h uint64, e *Entry) {
	raiseUntil(c.door(h), e.Expires)
	if !c.c.Set(key, e, 1) {
		c.stats[h%statShards].dropped.Add(1)
	}
}

// Wait blocks until buffered writes are applied (tests and benchmarks).
func (c *Cache) Wait() {
	if c != nil {
		c.c.Wait()
	}
}

// Close stops the cache's goroutines.
func (c *Cache) Close() {
	if c != nil {
		c.c.Close()
	}
}

// Stats returns the lookups that served an entry (hits), those that did
// not (misses) and the sets ristretto dropped from its buffer.
func (c *Cache) Stats() (hits, misses, dropped uint64) {
	if c == nil {
		return 0, 0, 0
	}
	for i := range c.stats {
		st := &c.stats[i]
		hits += st.hits.Load()
		misses += st.misses.Load()
		dropped += st.dropped.Load()
	}
	return hits, misses, dropped
}

// MaxRawKey is the longest key kept as built; a longer one (a policy that
// reads every header, a client that sends many) is replaced by its
// SHA-256, so what the cache hashes and compares does not grow with the
// request.
const MaxRawKey = 512

// Key builds an unambiguous cache key: each field is written as a
// uvarint length followed by its bytes.
type Key struct {
	b      []byte
	sum    [sha256.Size + 1]byte
	hashed bool
}

// Reset empties the key for reuse.
func (k *Key) Reset() { k.b, k.hashed = k.b[:0], false }

// Len returns the length of the key as built (before any hashing).
func (k *Key) Len() int { return len(k.b) }

// String appends a string field.
func (k *Key) String(s string) {
	k.Uint(uint64(len(s)))
	k.b = append(k.b, s...)
}

// Uint appends an integer field.
func (k *Key) Uint(v uint64) {
	if v < 0x80 { // the uvarint of a small value is that byte
		k.b = append(k.b, byte(v))
		return
	}
	k.b = binary.AppendUvarint(k.b, v)
}

// Bytes returns the key: as built when at most MaxRawKey bytes, else a
// marker byte and the SHA-256 of what was built (telling it apart from a
// raw key of the same length would take a SHA-256 preimage). It is valid
// until the next Reset.
func (k *Key) Bytes() []byte {
	if len(k.b) <= MaxRawKey {
		return k.b
	}
	if !k.hashed {
		k.sum[0] = 0xff
		h := sha256.Sum256(k.b)
		copy(k.sum[1:], h[:])
		k.hashed = true
	}
	return k.sum[:]
}
