package decisioncache

import (
	"hash/maphash"
	"strconv"
	"testing"
	"time"
)

// inRistretto reports whether ristretto itself holds key (after the sets
// buffered so far are applied).
func inRistretto(c *Cache, key []byte) bool {
	c.Wait()
	_, ok := c.c.Get(key)
	return ok
}

// sameSet returns n keys other than k that fall in k's young set.
func sameSet(t *testing.T, c *Cache, k []byte, n int) [][]byte {
	t.Helper()
	hk := maphash.Bytes(c.seed, k)
	set := (hk >> 32) % youngSets
	var out [][]byte
	for i := 0; len(out) < n; i++ {
		if i > 1<<24 {
			t.Fatal("no keys found in the same young set")
		}
		o := key("other", strconv.Itoa(i))
		// Not in k's door slot either: storing one would make the door
		// forget k, which the tests do not mean to test.
		if h := maphash.Bytes(c.seed, o); (h>>32)%youngSets == set && h&c.doorMask != hk&c.doorMask {
			out = append(out, o)
		}
	}
	return out
}

// TestAskedOnceStaysOutOfRistretto: a decision stored once is served from
// the young table without entering ristretto; asked for again, it enters
// ristretto.
func TestAskedOnceStaysOutOfRistretto(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newCache(t)
	k := key("spiffe://example.org/a", "tools/call", "repo-1")
	c.Set(k, &Entry{Rule: "r", Epoch: 1}, time.Time{}, now)
	if inRistretto(c, k) {
		t.Fatal("a decision asked for once was set in ristretto")
	}
	if e, ok := c.Get(k, 1, now); !ok || e.Rule != "r" {
		t.Fatalf("young entry not served: %+v %v", e, ok)
	}
	if !inRistretto(c, k) {
		t.Fatal("a decision asked for again is not in ristretto")
	}
}

// TestYoungKeepsASetsKeys: up to youngWays keys of one set all stay
// young; a fifth evicts one, and a key stored again within the TTL after
// its young entry was evicted goes to ristretto, after the TTL young
// again.
func TestYoungKeepsASetsKeys(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newCache(t)
	k := key("k")
	others := sameSet(t, c, k, youngWays)
	c.Set(k, &Entry{Rule: "k", Epoch: 1}, time.Time{}, now)
	for i, o := range others[:youngWays-1] {
		c.Set(o, &Entry{Rule: strconv.Itoa(i), Epoch: 1}, time.Time{}, now)
	}
	for i, o := range append([][]byte{k}, others[:youngWays-1]...) {
		if y := c.youngGet(o, maphash.Bytes(c.seed, o)); y == nil {
			t.Fatalf("key %d of %d in one set is not young", i, youngWays)
		}
	}
	// More keys of the set: one of them replaces k (ways are replaced in
	// turn once all hold valid entries).
	more := sameSet(t, c, k, 2*youngWays)[youngWays-1:]
	for _, o := range more {
		c.Set(o, &Entry{Epoch: 1}, time.Time{}, now)
		if c.youngGet(k, maphash.Bytes(c.seed, k)) == nil {
			break
		}
	}
	if c.youngGet(k, maphash.Bytes(c.seed, k)) != nil {
		t.Fatalf("k stayed young after %d more keys of its set", len(more))
	}
	// k again within the TTL: asked for twice, so ristretto.
	c.Set(k, &Entry{Rule: "k2", Epoch: 1}, time.Time{}, now.Add(time.Second))
	if !inRistretto(c, k) {
		t.Fatal("a decision stored again within the TTL is not in ristretto")
	}
	if e, ok := c.Get(k, 1, now.Add(time.Second)); !ok || e.Rule != "k2" {
		t.Fatalf("ristretto entry not served: %+v %v", e, ok)
	}
	// Past the TTL, another key: young.
	k3 := others[0]
	later := now.Add(time.Minute)
	c.Set(k3, &Entry{Rule: "k3", Epoch: 1}, time.Time{}, later)
	if y := c.youngGet(k3, maphash.Bytes(c.seed, k3)); y == nil || y.e.Rule != "k3" || inRistretto(c, k3) {
		t.Fatal("a decision stored again after the TTL is not young, or is in ristretto")
	}
}

// TestYoungIsExact: with many more keys than the young table holds, a
// lookup returns its own key's entry or misses; a young entry of an
// older epoch or past its expiry is never served.
func TestYoungIsExact(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newCache(t)
	const n = 3 * youngSets * youngWays
	keys := make([][]byte, n)
	for i := range keys {
		keys[i] = key("spiffe://example.org/a", strconv.Itoa(i))
		c.Set(keys[i], &Entry{Rule: strconv.Itoa(i), Epoch: 1}, time.Time{}, now)
	}
	served := 0
	for i, k := range keys {
		if e, ok := c.Get(k, 1, now); ok {
			served++
			if e.Rule != strconv.Itoa(i) {
				t.Fatalf("key %d served the entry of key %s", i, e.Rule)
			}
		}
	}
	if served < youngSets*youngWays/2 {
		t.Fatalf("only %d of %d young lookups hit", served, n)
	}
	k := key("fresh")
	c.Set(k, &Entry{Epoch: 1}, time.Time{}, now)
	if _, ok := c.Get(k, 2, now); ok {
		t.Fatal("young table served an entry of an older epoch")
	}
	if _, ok := c.Get(k, 1, now.Add(5*time.Second)); ok {
		t.Fatal("young table served an expired entry")
	}
}

// TestDoorSkipsRistretto: once every entry set in ristretto under a
// door slot's keys has expired, lookups there do not ask ristretto.
func TestDoorSkipsRistretto(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newCache(t)
	k := key("k")
	e := &Entry{Epoch: 1, Expires: now.Add(time.Hour)}
	c.c.Set(k, e, 1) // behind the door's back: its until is not raised
	c.Wait()
	if _, ok := c.Get(k, 1, now); ok {
		t.Fatal("ristretto was asked although no entry was set under this door slot")
	}
	c.setOld(k, maphash.Bytes(c.seed, k), e)
	c.Wait()
	if _, ok := c.Get(k, 1, now); !ok {
		t.Fatal("an entry set through the door is not served")
	}
}
