package slotcache

import (
	"sync"
	"sync/atomic"
	"testing"
)

// TestSlot: a key always maps to one slot, extra moves it, and slots
// keep what was stored in them.
func TestSlot(t *testing.T) {
	c := New[string](8)
	slot := func(key string, extra uint64) *atomic.Pointer[string] {
		s, _ := c.Slot(key, extra)
		return s
	}
	if slot("a", 0) != slot("a", 0) {
		t.Fatal("a key maps to two slots")
	}
	moved := false
	for extra := uint64(1); extra < 8; extra++ {
		moved = moved || slot("a", extra) != slot("a", 0)
	}
	if !moved {
		t.Fatal("extra never moves the slot")
	}
	v := "entry"
	slot("a", 0).Store(&v)
	if got := slot("a", 0).Load(); got == nil || *got != "entry" {
		t.Fatalf("slot holds %v", got)
	}
	_, ha := c.Slot("a", 0)
	if c.SeenTwice(ha) || !c.SeenTwice(ha) || !c.SeenTwice(ha) {
		t.Fatal("a key is seen twice from its second sighting in a row")
	}
	if c.SeenTwice(ha+8) || c.SeenTwice(ha) {
		t.Fatal("another key in the same slot counts as a sighting")
	}
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := string(rune('a' + i))
			for range 1000 {
				slot(s, 0).Store(&s)
				_ = slot("a", 0).Load()
				_, h := c.Slot(s, 0)
				c.SeenTwice(h)
			}
		}()
	}
	wg.Wait()
}
