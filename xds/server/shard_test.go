package xdsserver

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// shardName is the shard a record named record travels in.
func shardName(record string) string {
	return mandatev1.RevocationShardName(mandatev1.RevocationShardOf(record))
}

// sameShard returns n record names that share one shard, sorted.
func sameShard(n int) []string {
	by := map[uint32][]string{}
	for i := 0; ; i++ {
		name := fmt.Sprintf("r%d", i)
		s := mandatev1.RevocationShardOf(name)
		by[s] = append(by[s], name)
		if len(by[s]) == n {
			return slices.Sorted(slices.Values(by[s]))
		}
	}
}

func manyRevs(n int) map[string]*mandatev1.Revocation {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("rec-%05d", i)
	}
	return revs(names...)
}

// TestShardUpdateTouchesOnlyItsShard: with thousands of records held, a
// put, a change and a delete of one record each resend exactly the one
// shard the record is in, whole, and nothing else; removing the last
// record of a shard removes the shard resource.
func TestShardUpdateTouchesOnlyItsShard(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	all := manyRevs(5000)
	pair := sameShard(2)
	maps.Copy(all, revs(pair...))
	if _, err := h.srv.SetRevocations(all); err != nil {
		t.Fatal(err)
	}
	d := subscribe(t, ctx, h, "replica-a", nil)
	if _, up, _ := d.next(); len(up) != len(all) || d.resent != len(d.shards) || len(d.shards) > len(all) {
		t.Fatalf("first response carried %d records in %d shards, want %d", len(up), d.resent, len(all))
	}
	steps := []struct {
		name     string
		put      []string
		del      []string
		updated  []string // the records carried: the whole shard
		removed  []string
		gone     bool // the shard resource is removed
		resource bool
	}{
		{"put one", []string{"new-one"}, nil, nil, nil, false, true},
		{"change one of a shared shard", []string{pair[0]}, nil, pair, nil, false, true},
		{"delete one of a shared shard", nil, []string{pair[1]}, pair[:1], pair[1:], false, true},
		{"delete the last of a shard", nil, []string{pair[0]}, nil, pair[:1], true, false},
	}
	for _, st := range steps {
		put := revs(st.put...)
		for _, r := range put {
			r.Reason = "changed in " + st.name
		}
		v, err := h.srv.UpdateRevocations(put, st.del)
		if err != nil {
			t.Fatal(err)
		}
		gv, up, rm := d.next()
		want := st.updated
		if want == nil && st.resource {
			want = st.put
		}
		if gv != v || !slices.Equal(up, want) || !slices.Equal(rm, st.removed) {
			t.Fatalf("%s: version %s records %v removed %v; want %s %v %v", st.name, gv, up, rm, v, want, st.removed)
		}
		if st.resource && d.resent != 1 || !st.resource && d.resent != 0 {
			t.Fatalf("%s: %d shards resent", st.name, d.resent)
		}
		if _, held := d.held[shardName(append(st.put, st.del...)[0])]; held == st.gone {
			t.Fatalf("%s: shard held %v, want %v", st.name, held, !st.gone)
		}
	}
	if err := h.srv.WaitAcked(ctx, mandatev1.RevocationTypeURL, h.srv.Versions()[mandatev1.RevocationTypeURL]); err != nil {
		t.Fatal(err)
	}
}

// TestShardResumeResendsNothingUnchanged: a replica that reconnects
// announcing the shards it holds gets only the shards that changed while
// it was away, and one that changed nothing gets no shard at all.
func TestShardResumeResendsNothingUnchanged(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := h.srv.SetRevocations(manyRevs(5000)); err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithCancel(ctx)
	d := subscribe(t, sctx, h, "replica-a", nil)
	if _, up, _ := d.next(); len(up) != 5000 {
		t.Fatalf("first response carried %d records", len(up))
	}
	scancel()
	waitFor(t, "stream closed", func() bool { return !replica(t, h.srv, "replica-a").Connected })

	// Nothing changed: the resumed stream gets no shard.
	sctx, scancel = context.WithCancel(ctx)
	back := d.reconnect(sctx, h, "replica-a")
	if _, up, rm := back.next(); len(up) != 0 || len(rm) != 0 || back.resent != 0 {
		t.Fatalf("resume with nothing changed resent %d shards (%d records), removed %v", back.resent, len(up), rm)
	}
	scancel()
	waitFor(t, "stream closed", func() bool { return !replica(t, h.srv, "replica-a").Connected })

	changed := rev("rec-00042")
	changed.Reason = "changed while away"
	v, err := h.srv.UpdateRevocations(map[string]*mandatev1.Revocation{"rec-00042": changed}, []string{"rec-00043"})
	if err != nil {
		t.Fatal(err)
	}
	again := back.reconnect(ctx, h, "replica-a")
	gv, up, rm := again.next()
	touched := map[string]bool{shardName("rec-00042"): true, shardName("rec-00043"): true}
	if gv != v || again.resent > len(touched) || !slices.Contains(up, "rec-00042") || !slices.Equal(rm, []string{"rec-00043"}) {
		t.Fatalf("resume after a change: version %s, %d shards resent, records %v removed %v", gv, again.resent, up, rm)
	}
	if len(again.value) != 4999 || again.value["rec-00042"].GetReason() != changed.Reason {
		t.Fatalf("replica holds %d records after the resume", len(again.value))
	}
}
