package storetest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// testDriftQueue: events come out oldest first, each exactly once, also
// to takers racing each other; bad batches are refused.
func testDriftQueue(t *testing.T, nb NewBackend) {
	ctx := context.Background()
	d, _, clk := open(t, nb)
	if err := d.EnqueueDrift(ctx, "cp-a", [][]byte{[]byte("a0"), []byte("a1")}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Millisecond)
	if err := d.EnqueueDrift(ctx, "cp-b", [][]byte{[]byte("b0")}); err != nil {
		t.Fatal(err)
	}
	got, err := d.TakeDrift(ctx, 2)
	if err != nil || len(got) != 2 || string(got[0]) != "a0" || string(got[1]) != "a1" {
		t.Fatalf("first take: %q %v", got, err)
	}
	got, err = d.TakeDrift(ctx, 10)
	if err != nil || len(got) != 1 || string(got[0]) != "b0" {
		t.Fatalf("second take: %q %v", got, err)
	}
	if got, err := d.TakeDrift(ctx, 10); err != nil || len(got) != 0 {
		t.Fatalf("take of an empty queue: %q %v", got, err)
	}
	for name, err := range map[string]error{
		"no instance": d.EnqueueDrift(ctx, "", [][]byte{[]byte("x")}),
		"empty event": d.EnqueueDrift(ctx, "cp-a", [][]byte{{}}),
		"take zero":   func() error { _, err := d.TakeDrift(ctx, 0); return err }(),
	} {
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}

	// Two takers race over 200 events: every event once.
	for i := range 20 {
		batch := make([][]byte, 10)
		for j := range batch {
			batch[j] = fmt.Appendf(nil, "e%d-%d", i, j)
		}
		if err := d.EnqueueDrift(ctx, "cp-a", batch); err != nil {
			t.Fatal(err)
		}
		clk.Advance(time.Millisecond)
	}
	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for {
				got, err := d.TakeDrift(ctx, 7)
				if err != nil {
					t.Error(err)
					return
				}
				if len(got) == 0 {
					return
				}
				mu.Lock()
				for _, e := range got {
					seen[string(e)]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(seen) != 200 {
		t.Fatalf("%d distinct events taken, want 200", len(seen))
	}
	for e, n := range seen {
		if n != 1 {
			t.Fatalf("event %s taken %d times", e, n)
		}
	}
}
