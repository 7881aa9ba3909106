package storetest

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/cp/store"
)

// collect follows d from after until it has seen revision until, and
// returns the changes, in the order delivered.
func collect(t *testing.T, d *store.DB, after, until uint64) []store.Change {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out []store.Change
	errDone := errors.New("done")
	last := after
	err := d.Follow(ctx, after, func(rev uint64, cs []store.Change) error {
		if rev < last {
			t.Errorf("revision %d delivered after %d", rev, last)
		}
		last = rev
		out = append(out, cs...)
		if rev >= until {
			return errDone
		}
		return nil
	})
	if !errors.Is(err, errDone) {
		t.Fatalf("follow from %d to %d: %v (got %v)", after, until, err, out)
	}
	return out
}

// testFollow: every committed resource write reaches a follower once, in
// commit order, at the version the write returned, with what it put and
// deleted; a follower starting later sees only what came after.
func testFollow(t *testing.T, nb NewBackend) {
	ctx := context.Background()
	d, _, _ := open(t, nb)
	start, err := d.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v1, err := d.Put(ctx, typeA, items("a", "1", "b", "2"))
	if err != nil {
		t.Fatal(err)
	}
	// A write to something else than a resource is not a change.
	if err := d.AppendAudit(ctx, store.AuditEntry{Actor: actor, Action: "x.y"}); err != nil {
		t.Fatal(err)
	}
	v2, err := d.Update(ctx, typeA, items("c", "3"), []string{"a"})
	if err != nil {
		t.Fatal(err)
	}
	v3, err := d.Replace(ctx, typeB, 0, items("r", "9"))
	if err != nil {
		t.Fatal(err)
	}
	got := collect(t, d, start, v3)
	want := []store.Change{
		{TypeURL: typeA, Version: v1, Put: items("a", "1", "b", "2")},
		{TypeURL: typeA, Version: v2, Put: items("c", "3"), Deleted: []string{"a"}},
		{TypeURL: typeB, Version: v3, Put: items("r", "9")},
	}
	sameChanges(t, got, want)
	sameChanges(t, collect(t, d, v1, v3), want[1:])

	// A follower waiting for the next write gets it.
	res := make(chan []store.Change, 1)
	go func() {
		var cs []store.Change
		_ = d.Follow(ctx, v3, func(_ uint64, c []store.Change) error {
			cs = append(cs, c...)
			if len(cs) > 0 {
				return errors.New("done")
			}
			return nil
		})
		res <- cs
	}()
	v4, err := d.Delete(ctx, typeB, []string{"r"})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case cs := <-res:
		sameChanges(t, cs, []store.Change{{TypeURL: typeB, Version: v4, Deleted: []string{"r"}}})
	case <-time.After(20 * time.Second):
		t.Fatal("a waiting follower did not get the next write")
	}
}

func sameChanges(t *testing.T, got, want []store.Change) {
	t.Helper()
	norm := func(cs []store.Change) []store.Change {
		out := slices.Clone(cs)
		for i := range out {
			out[i].Put = slices.Clone(out[i].Put)
			slices.SortFunc(out[i].Put, func(a, b store.Item) int {
				if a.Name < b.Name {
					return -1
				}
				if a.Name > b.Name {
					return 1
				}
				return 0
			})
			out[i].Deleted = slices.Sorted(slices.Values(out[i].Deleted))
		}
		return out
	}
	g, w := norm(got), norm(want)
	if len(g) != len(w) {
		t.Fatalf("changes %+v, want %+v", g, w)
	}
	for i := range g {
		if g[i].TypeURL != w[i].TypeURL || g[i].Version != w[i].Version ||
			!slices.Equal(g[i].Deleted, w[i].Deleted) || len(g[i].Put) != len(w[i].Put) {
			t.Fatalf("change %d: %+v, want %+v", i, g[i], w[i])
		}
		sameItems(t, g[i].Put, w[i].Put)
	}
}
