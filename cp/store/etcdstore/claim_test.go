package etcdstore

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/internal/etcdtest"
)

// TestOneUseApprovalClaimedOnceAcrossInstances: replicas on two
// mandate-cp instances (two clients on two etcd members) claim the use of
// a one-use approval at the same moment: exactly one claim wins, the
// others are told the uses are exhausted, whichever instance they went
// through.
func TestOneUseApprovalClaimedOnceAcrossInstances(t *testing.T) {
	ctx := context.Background()
	c := etcdtest.Start(t, 3)
	prefix := freshPrefix()
	var dbs []*store.DB
	for i := range 2 {
		d, err := store.New(backend(t, c, []string{c.Members[i].ClientURL}, prefix))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Close() })
		dbs = append(dbs, d)
	}
	exp := time.Now().Add(time.Hour)
	for round := range 5 {
		name := "ap-" + string(rune('a'+round))
		var won, exhausted atomic.Int32
		var wg sync.WaitGroup
		startLine := make(chan struct{})
		for i := range 16 {
			wg.Go(func() {
				<-startLine
				_, err := dbs[i%2].ClaimApprovalUse(ctx, name, 1, exp)
				switch {
				case err == nil:
					won.Add(1)
				case errors.Is(err, store.ErrExhausted):
					exhausted.Add(1)
				default:
					t.Error(err)
				}
			})
		}
		close(startLine)
		wg.Wait()
		if won.Load() != 1 || exhausted.Load() != 15 {
			t.Fatalf("%s: %d claims won, %d refused; want 1 and 15", name, won.Load(), exhausted.Load())
		}
	}
}
