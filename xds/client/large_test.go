package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/xds/mandatev1"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

// bigRevs returns n revocation records with reasons of reason bytes.
func bigRevs(n, reason int) map[string]*mandatev1.Revocation {
	out := make(map[string]*mandatev1.Revocation, n)
	long := strings.Repeat("r", reason)
	for i := range n {
		name := fmt.Sprintf("r-%07d", i)
		out[name] = &mandatev1.Revocation{Name: name, Kind: "task", Value: "task-" + name, Reason: long,
			Expires: timestamppb.New(farFuture)}
	}
	return out
}

// TestLargeRevocationDeltaGetsThrough: a revocation delta of 20,000
// records with 1 KB reasons (about 21 MB, beyond gRPC's 4 MiB default
// receive limit) reaches the replica, in one response or, past the
// server's chunk budget, in chunks; it is applied whole, and ACKed only
// once the last chunk is in. Before, the replica failed to receive it,
// kept the old revocations and ignored every later one.
func TestLargeRevocationDeltaGetsThrough(t *testing.T) {
	t.Run("one response", func(t *testing.T) { largeDelta(t) })
	t.Run("4 MiB chunks", func(t *testing.T) { largeDelta(t, xdsserver.WithChunkBytes(4<<20)) })
}

func largeDelta(t *testing.T, opts ...xdsserver.Option) {
	cp := startCP(t, opts...)
	setAll(t, cp.srv, pols(goodPolicy("p1")), revs("r1"))
	var target atomic.Value
	target.Store(cp.addr)
	rec := newRecorder()
	var sizes []int // revocations of every State applied, under rec.mu
	rec.fail = func(s State) error { sizes = append(sizes, s.Revocations.Len()); return nil }
	c, stop := runClient(t, Config{Conn: dialConn(t, &target), NodeID: "big", Apply: rec.apply})
	defer stop()
	rec.wait(t, "synced", func(s State) bool { return len(s.Versions) == 4 })

	big := bigRevs(20000, 1024)
	size := 0
	for _, r := range big {
		size += proto.Size(r)
	}
	if size <= 4<<20 {
		t.Fatalf("test set of %d bytes fits gRPC's default limit", size)
	}
	v, err := cp.srv.UpdateRevocations(big, nil)
	if err != nil {
		t.Fatal(err)
	}
	// 21 MB through the race detector on a shared machine: wait long.
	wctx, wcancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer wcancel()
	if err := cp.srv.WaitAcked(wctx, mandatev1.RevocationTypeURL, v); err != nil {
		t.Fatal(err)
	}
	s := rec.wait(t, "every record applied", func(s State) bool { return s.Revocations.Len() == 20001 })
	if s.Versions[mandatev1.RevocationTypeURL] != v {
		t.Fatalf("applied version %q, want %q", s.Versions[mandatev1.RevocationTypeURL], v)
	}
	// Applied whole: no State with part of the delta was installed.
	rec.mu.Lock()
	for _, n := range sizes {
		if n != 0 && n != 1 && n != 20001 {
			rec.mu.Unlock()
			t.Fatalf("a State with %d revocations was applied: part of the delta", n)
		}
	}
	rec.mu.Unlock()
	// And the replica still follows: a later revocation arrives.
	v2, err := cp.srv.UpdateRevocations(revs("after"), nil)
	if err != nil {
		t.Fatal(err)
	}
	waitAcked(t, cp.srv, mandatev1.RevocationTypeURL, v2)
	if !c.Synced() {
		t.Fatal("not synced")
	}
}

// TestCannotApplyIsNotContact: a replica whose updates fail to apply is
// not in contact with the control plane, however many responses arrive,
// so its staleness budget runs out and it fails closed.
func TestCannotApplyIsNotContact(t *testing.T) {
	cp := startCP(t)
	setAll(t, cp.srv, pols(goodPolicy("p1")), revs("r1"))
	var target atomic.Value
	target.Store(cp.addr)
	clock := newFakeClock()
	rec := newRecorder()
	var refuse atomic.Bool
	rec.fail = func(s State) error {
		if refuse.Load() && s.Revocations.Len() > 1 {
			return errors.New("cannot hold more revocations")
		}
		return nil
	}
	c, stop := runClient(t, Config{Conn: dialConn(t, &target), NodeID: "stuck", Clock: clock, Heartbeat: time.Minute, Apply: rec.apply})
	defer stop()
	rec.wait(t, "synced", func(s State) bool { return len(s.Versions) == 4 })
	w := clock.next(t)
	// Contact is stored once the last type's ACK is sent, after Apply.
	var first time.Time
	for deadline := time.Now().Add(10 * time.Second); first.IsZero(); first = c.LastContact() {
		if time.Now().After(deadline) {
			t.Fatal("no contact after sync")
		}
		time.Sleep(time.Millisecond)
	}
	refuse.Store(true)
	v, err := cp.srv.UpdateRevocations(revs("r2"), nil)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for cp.srv.Status()[0].Types[mandatev1.RevocationTypeURL].NackedVersion != v {
		if time.Now().After(deadline) {
			t.Fatal("the update was not NACKed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Heartbeats keep being answered; none is contact.
	for range 3 {
		w.ch <- clock.advance(time.Minute)
		w = clock.next(t)
	}
	if got := c.LastContact(); !got.Equal(first) {
		t.Fatalf("LastContact moved to %v while updates could not be applied (was %v)", got, first)
	}
	pushes := testutil.ToFloat64(c.m.nacks.WithLabelValues("Revocation"))
	if pushes < 1 {
		t.Fatalf("nacks %v", pushes)
	}
}
