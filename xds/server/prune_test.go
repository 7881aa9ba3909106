package xdsserver

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// Disconnected nodes are forgotten after the retention even when nobody
// asks for Status: a peer that reconnects under ever new node ids must not
// grow the node table.
func TestNodeTablePrunedOnConnect(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	srv, err := New(slog.New(slog.DiscardHandler), WithClock(clock), WithStatusRetention(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for i := range 100 {
		k := streamKey{delta: true, id: int64(i)}
		if err := srv.openStream(context.Background(), k); err != nil {
			t.Fatal(err)
		}
		node := &core.Node{Id: fmt.Sprintf("replica-%d", i)}
		if err := srv.onRequest(k, node, mandatev1.PolicyTypeURL, "", nil); err != nil {
			t.Fatal(err)
		}
		srv.closeStream(k)
		mu.Lock()
		now = now.Add(2 * time.Minute)
		mu.Unlock()
	}
	srv.mu.Lock()
	n := len(srv.nodes)
	srv.mu.Unlock()
	if n > 1 {
		t.Fatalf("%d nodes retained, want at most 1 (older ones are past the retention)", n)
	}
}
