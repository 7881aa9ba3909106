package fleet

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/cp/store/etcdstore"
	"github.com/mandate-dev/mandate/internal/etcdtest"
)

// TestSingletonsMoveWhenTheLeaderDies: of two instances campaigning,
// one runs the singletons; when it dies without resigning (its etcd
// client gone, its lease left to expire) the other runs them within the
// lease TTL, and the two never run them at once.
func TestSingletonsMoveWhenTheLeaderDies(t *testing.T) {
	c := etcdtest.Start(t, 3)
	prefix := freshPrefix()
	var running, maxRunning atomic.Int32
	var mu sync.Mutex
	var leader string
	started := make(chan string, 4)
	type inst struct {
		name   string
		be     *etcdstore.Backend
		cancel context.CancelFunc
		done   chan struct{}
	}
	start := func(name string, member int) *inst {
		be, err := etcdstore.OpenBackend(context.Background(), etcdstore.Config{Endpoints: []string{c.Members[member].ClientURL}, Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = be.Close() })
		el, err := NewElection(be.Client(), prefix, name, ttl)
		if err != nil {
			t.Fatal(err)
		}
		s, err := NewSingletons(el, quiet())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		in := &inst{name: name, be: be, cancel: cancel, done: make(chan struct{})}
		go func() {
			defer close(in.done)
			s.Run(ctx, func(ctx context.Context) {
				n := running.Add(1)
				for m := maxRunning.Load(); n > m && !maxRunning.CompareAndSwap(m, n); m = maxRunning.Load() {
				}
				mu.Lock()
				leader = name
				mu.Unlock()
				started <- name
				<-ctx.Done()
				running.Add(-1)
			})
		}()
		t.Cleanup(func() { cancel(); <-in.done })
		return in
	}
	a := start("cp-a", 0)
	first := <-started
	start("cp-b", 1)
	if first != "cp-a" {
		t.Fatalf("first leader %s, want cp-a (alone when it campaigned)", first)
	}
	select {
	case name := <-started:
		t.Fatalf("%s runs the singletons while cp-a leads", name)
	case <-time.After(ttl + time.Second):
	}

	// cp-a dies: its etcd client is gone, nothing resigns for it.
	killed := time.Now()
	_ = a.be.Close()
	select {
	case name := <-started:
		if name != "cp-b" {
			t.Fatalf("after cp-a died the singletons run on %s", name)
		}
	case <-time.After(2*ttl + 3*time.Second):
		t.Fatalf("no instance runs the singletons %v after the leader died (lease TTL %v)", time.Since(killed), ttl)
	}
	took := time.Since(killed)
	t.Logf("the singletons moved to cp-b %v after the leader died (lease TTL %v)", took.Round(time.Millisecond), ttl)
	if maxRunning.Load() > 1 {
		t.Fatalf("%d instances ran the singletons at once", maxRunning.Load())
	}
	mu.Lock()
	defer mu.Unlock()
	if leader != "cp-b" {
		t.Fatalf("leader %s", leader)
	}
}
