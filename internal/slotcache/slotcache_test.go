package slotcache

import (
	"sync"
	"testing"
)

// TestSlot: a key always maps to one slot, extra moves it, and slots
// keep what was stored in them.
func TestSlot(t *testing.T) {
	c := New[string](8)
	if c.Slot("a", 0) != c.Slot("a", 0) {
		t.Fatal("a key maps to two slots")
	}
	moved := false
	for extra := uint64(1); extra < 8; extra++ {
		moved = moved || c.Slot("a", extra) != c.Slot("a", 0)
	}
	if !moved {
		t.Fatal("extra never moves the slot")
	}
	v := "entry"
	c.Slot("a", 0).Store(&v)
	if got := c.Slot("a", 0).Load(); got == nil || *got != "entry" {
		t.Fatalf("slot holds %v", got)
	}
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := string(rune('a' + i))
			for range 1000 {
				c.Slot(s, 0).Store(&s)
				_ = c.Slot("a", 0).Load()
			}
		}()
	}
	wg.Wait()
}
