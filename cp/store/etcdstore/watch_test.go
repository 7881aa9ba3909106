package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/internal/etcdtest"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// TestFollowSeesOtherInstances: a DB follows the writes another instance
// commits, at the versions they returned; a follower starting from a
// compacted revision is told so (ErrCompacted) instead of missing writes.
func TestFollowSeesOtherInstances(t *testing.T) {
	ctx := context.Background()
	c := etcdtest.Start(t, 3)
	prefix := freshPrefix()
	a, err := store.New(backend(t, c, []string{c.Members[0].ClientURL}, prefix))
	if err != nil {
		t.Fatal(err)
	}
	b, err := store.New(backend(t, c, []string{c.Members[1].ClientURL}, prefix))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
	from, err := b.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan store.Change, 16)
	fctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- b.Follow(fctx, from, func(_ uint64, cs []store.Change) error {
			for _, c := range cs {
				got <- c
			}
			return nil
		})
	}()
	v1, err := a.Put(ctx, mandatev1.RevocationTypeURL, []store.Item{{Name: "r1", Value: []byte("x")}})
	if err != nil {
		t.Fatal(err)
	}
	v2, err := a.Delete(ctx, mandatev1.RevocationTypeURL, []string{"r1"})
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []struct {
		v   uint64
		put string
		del string
	}{{v1, "r1", ""}, {v2, "", "r1"}} {
		select {
		case ch := <-got:
			if ch.Version != want.v || ch.TypeURL != mandatev1.RevocationTypeURL ||
				(want.put != "" && (len(ch.Put) != 1 || ch.Put[0].Name != want.put)) ||
				(want.del != "" && (len(ch.Deleted) != 1 || ch.Deleted[0] != want.del)) {
				t.Fatalf("change %d: %+v", i, ch)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("change %d of the other instance not seen", i)
		}
	}
	stop()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("follow ended with %v", err)
	}

	be := backend(t, c, c.Endpoints(), prefix)
	t.Cleanup(func() { _ = be.Close() })
	if _, err := be.Client().Compact(ctx, int64(v2)); err != nil {
		t.Fatal(err)
	}
	err = b.Follow(ctx, v1-1, func(uint64, []store.Change) error { return nil })
	if !errors.Is(err, store.ErrCompacted) {
		t.Fatalf("follow from a compacted revision: %v, want ErrCompacted", err)
	}
}

// TestNoQuorumFailsFast: an instance whose etcd lost its quorum refuses
// writes at once with "etcd unavailable" (store.ErrUnavailable), not after
// a long wait, and writes again once the quorum is back.
func TestNoQuorumFailsFast(t *testing.T) {
	ctx := context.Background()
	c := etcdtest.Start(t, 3)
	be, d := openDB(t, Config{Endpoints: []string{c.Members[0].ClientURL},
		ProbeEvery: 100 * time.Millisecond, ProbeTimeout: 300 * time.Millisecond, OpTimeout: time.Second})
	put := func(name string) error {
		_, err := d.Put(ctx, mandatev1.RevocationTypeURL, []store.Item{{Name: name, Value: []byte("x")}})
		return err
	}
	if err := put("before"); err != nil {
		t.Fatal(err)
	}
	h := be.Health()
	c.Kill(1)
	c.Kill(2)
	select {
	case <-h.Changed:
	case <-time.After(10 * time.Second):
		t.Fatal("loss of quorum not noticed")
	}
	if be.Health().Err == nil {
		t.Fatal("health reports etcd available without quorum")
	}
	for range 3 {
		began := time.Now()
		err := put("during")
		if !errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), "etcd unavailable") {
			t.Fatalf("write without quorum: %v", err)
		}
		if d := time.Since(began); d > 100*time.Millisecond {
			t.Fatalf("write without quorum took %v to fail", d)
		}
	}
	c.Restart(1)
	if err := etcdtest.WaitHealthy(withTimeout(t, 30*time.Second), func(context.Context) error { return put("after") }); err != nil {
		t.Fatal(err)
	}
	items, _, err := d.List(ctx, mandatev1.RevocationTypeURL)
	if err != nil || len(items) != 2 || items[0].Name != "after" || items[1].Name != "before" {
		t.Fatalf("stored %v, %v", items, err)
	}
}

func withTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestWatchGoesThroughEveryMember: a backend on three endpoints follows
// the store through every member at once, so a member that hangs (paused:
// its connections open and silent) holds no commit back, whichever
// member it is, the leader included; a single watch on that member would
// wait for it.
func TestWatchGoesThroughEveryMember(t *testing.T) {
	ctx := context.Background()
	c := etcdtest.Start(t, 3)
	prefix := freshPrefix()
	d, err := store.New(backend(t, c, c.Endpoints(), prefix))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	from, err := d.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan uint64, 64)
	fctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		_ = d.Follow(fctx, from, func(rev uint64, cs []store.Change) error {
			if len(cs) > 0 {
				got <- rev
			}
			return nil
		})
	}()
	for i := range c.Members {
		c.Pause(i)
		var others []string
		for j, m := range c.Members {
			if j != i {
				others = append(others, m.ClientURL)
			}
		}
		w, err := store.New(backend(t, c, others, prefix))
		if err != nil {
			t.Fatal(err)
		}
		var v uint64
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = etcdtest.WaitHealthy(wctx, func(ctx context.Context) error {
			v, err = w.Put(ctx, mandatev1.RevocationTypeURL, []store.Item{{Name: fmt.Sprint("r", i), Value: []byte("x")}})
			return err
		})
		cancel()
		if err != nil {
			t.Fatalf("write with member %d paused: %v", i, err)
		}
		deadline := time.After(15 * time.Second)
		for seen := false; !seen; {
			select {
			case rev := <-got:
				seen = rev >= v
			case <-deadline:
				t.Fatalf("the commit at %d made with member %d paused was not delivered", v, i)
			}
		}
		c.Resume(i)
		_ = w.Close()
	}
}
