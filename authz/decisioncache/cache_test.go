package decisioncache

import (
	"bytes"
	"sync"
	"testing"
	"time"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (f *fakeClock) Now() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return f.t }
func (f *fakeClock) Add(d time.Duration) {
	f.mu.Lock()
	f.t = f.t.Add(d)
	f.mu.Unlock()
}

func newCache(t *testing.T, clk *fakeClock) *Cache {
	t.Helper()
	c, err := New(Config{MaxEntries: 1000, TTL: 5 * time.Second, Now: clk.Now})
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
	clk := &fakeClock{t: time.Unix(1000, 0)}
	c := newCache(t, clk)
	k := key("spiffe://example.org/a", "GET", "/x")
	c.Set(k, &Entry{Effect: 1, Rule: "r", Epoch: 7}, time.Time{})
	c.Wait()

	if _, ok := c.Get(k, 7); !ok {
		t.Fatal("miss right after set")
	}
	if _, ok := c.Get(k, 8); ok {
		t.Fatal("hit under a newer epoch: an old decision would outlive a state change")
	}
	clk.Add(5 * time.Second)
	if _, ok := c.Get(k, 7); ok {
		t.Fatal("hit after TTL")
	}
}

func TestNotAfterCapsTTL(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	c := newCache(t, clk)
	k := key("a")
	c.Set(k, &Entry{Epoch: 1}, clk.Now().Add(time.Second))
	c.Wait()
	if _, ok := c.Get(k, 1); !ok {
		t.Fatal("miss before notAfter")
	}
	clk.Add(time.Second)
	if _, ok := c.Get(k, 1); ok {
		t.Fatal("hit at notAfter: a decision outlived its mandate")
	}
	// Already past: never stored.
	k2 := key("b")
	c.Set(k2, &Entry{Epoch: 1}, clk.Now().Add(-time.Millisecond))
	c.Wait()
	if _, ok := c.Get(k2, 1); ok {
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

func TestNilCache(t *testing.T) {
	var c *Cache
	c.Set([]byte("k"), &Entry{}, time.Time{})
	if _, ok := c.Get([]byte("k"), 0); ok {
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
