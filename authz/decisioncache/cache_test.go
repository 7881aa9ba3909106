package decisioncache

import (
	"bytes"
	"strconv"
	"testing"
	"time"
)

func newCache(t *testing.T) *Cache {
	t.Helper()
	c, err := New(Config{MaxEntries: 1000, TTL: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func key(fields ...string) []byte {
	var k Key
	for _, f := range fields {
		k.String(f)
	}
	return append([]byte(nil), k.Bytes()...)
}

func TestGetSet(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newCache(t)
	k := key("spiffe://example.org/a", "GET", "/x")
	c.Set(k, &Entry{Effect: 1, Rule: "r", Epoch: 7}, time.Time{}, now)
	c.Wait()

	if _, ok := c.Get(k, 7, now); !ok {
		t.Fatal("miss right after set")
	}
	if _, ok := c.Get(k, 8, now); ok {
		t.Fatal("hit under a newer epoch: an old decision would outlive a state change")
	}
	now = now.Add(5 * time.Second)
	if _, ok := c.Get(k, 7, now); ok {
		t.Fatal("hit after TTL")
	}
}

func TestNotAfterCapsTTL(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newCache(t)
	k := key("a")
	c.Set(k, &Entry{Epoch: 1}, now.Add(time.Second), now)
	c.Wait()
	if _, ok := c.Get(k, 1, now); !ok {
		t.Fatal("miss before notAfter")
	}
	now = now.Add(time.Second)
	if _, ok := c.Get(k, 1, now); ok {
		t.Fatal("hit at notAfter: a decision outlived its mandate")
	}
	// Already past: never stored.
	k2 := key("b")
	c.Set(k2, &Entry{Epoch: 1}, now.Add(-time.Millisecond), now)
	c.Wait()
	if _, ok := c.Get(k2, 1, now); ok {
		t.Fatal("stored an entry whose notAfter had passed")
	}
}

func TestKeyUnambiguous(t *testing.T) {
	pairs := [][2][]string{
		{{"ab", "c"}, {"a", "bc"}},
		{{"", "x"}, {"x", ""}},
		{{"a\x01b"}, {"a", "b"}},
	}
	for _, p := range pairs {
		if bytes.Equal(key(p[0]...), key(p[1]...)) {
			t.Errorf("keys of %q and %q collide", p[0], p[1])
		}
	}
}

func TestLargeKeysAreHashed(t *testing.T) {
	var a, b Key
	a.String(string(bytes.Repeat([]byte("h"), 100_000)))
	b.String(string(bytes.Repeat([]byte("h"), 99_999)) + "i")
	if n := len(a.Bytes()); n > MaxRawKey {
		t.Fatalf("a %d-byte key is used as is (%d bytes)", a.Len(), n)
	}
	if bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two large keys differing in one byte hash the same")
	}
	var small Key
	small.String("x")
	if !bytes.Equal(small.Bytes(), []byte{1, 'x'}) {
		t.Fatalf("small key changed: %q", small.Bytes())
	}
}

func TestNilCache(t *testing.T) {
	var c *Cache
	c.Set([]byte("k"), &Entry{}, time.Time{}, time.Now())
	if _, ok := c.Get([]byte("k"), 0, time.Now()); ok {
		t.Fatal("nil cache hit")
	}
	c.Wait()
	c.Close()
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Config{MaxEntries: 0, TTL: time.Second}); err == nil {
		t.Error("accepted MaxEntries 0")
	}
	if _, err := New(Config{MaxEntries: 1, TTL: 0}); err == nil {
		t.Error("accepted TTL 0")
	}
}

// TestFrontTableIsExact: with more keys than the front table has slots
// (so slots collide and evict each other), every lookup returns the entry
// stored under its own key or misses, never another key's; an entry
// stored under an older epoch or past its expiry is never served from
// the front either; Stats counts the front's hits.
func TestFrontTableIsExact(t *testing.T) {
	now := time.Unix(1000, 0)
	c, err := New(Config{MaxEntries: 4 * frontSlots, TTL: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	const n = 3 * frontSlots
	keys := make([][]byte, n)
	for i := range keys {
		keys[i] = key("spiffe://example.org/a", strconv.Itoa(i))
		c.Set(keys[i], &Entry{Rule: strconv.Itoa(i), Epoch: 1}, time.Time{}, now)
	}
	c.Wait()
	served := 0
	for round := 0; round < 2; round++ {
		for i, k := range keys {
			e, ok := c.Get(k, 1, now)
			if !ok {
				continue // dropped by ristretto's admission and evicted from the front
			}
			served++
			if e.Rule != strconv.Itoa(i) {
				t.Fatalf("key %d served the entry of key %s", i, e.Rule)
			}
		}
	}
	if served < n {
		t.Fatalf("only %d of %d lookups hit", served, 2*n)
	}
	if hits, _, _ := c.Stats(); hits != uint64(served) {
		t.Fatalf("Stats counts %d hits, %d were served", hits, served)
	}
	hot := keys[0]
	c.Set(hot, &Entry{Rule: "hot", Epoch: 1}, time.Time{}, now)
	if e, ok := c.Get(hot, 1, now); !ok || e.Rule != "hot" {
		t.Fatalf("freshly stored entry: %+v %v", e, ok)
	}
	if _, ok := c.Get(hot, 2, now); ok {
		t.Fatal("front table served an entry of an older epoch")
	}
	if _, ok := c.Get(hot, 1, now.Add(5*time.Second)); ok {
		t.Fatal("front table served an expired entry")
	}
}
