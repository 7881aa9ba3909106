package revocation

import (
	"fmt"
	"maps"
	"math/bits"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/policies/pattern"
)

// naiveCheck is Check's specification as a scan over every record: the
// oracle the indexed Set is compared with.
func naiveCheck(recs map[string]Record, now time.Time, q Query) Verdict {
	sorted := slices.SortedFunc(maps.Values(recs), func(a, b Record) int { return strings.Compare(a.ID, b.ID) })
	var down *Record
	try := func(match func(r Record) bool) *Record {
		for i := range sorted {
			r := &sorted[i]
			if !match(*r) || !now.Before(r.Expires) {
				continue
			}
			if len(r.Intents) == 0 {
				return r
			}
			if !slices.Contains(r.Intents, q.Intent) && down == nil {
				down = r
			}
		}
		return nil
	}
	phases := []func(r Record) bool{
		func(r Record) bool {
			return r.Kind == KindSubject && !strings.Contains(r.Value, "*") && r.Value == q.Subject
		},
		func(r Record) bool {
			return r.Kind == KindSubject && strings.Contains(r.Value, "*") && pattern.MustCompile(r.Value).Match(q.Subject)
		},
		func(r Record) bool { return q.Task != "" && r.Kind == KindTask && r.Value == q.Task },
	}
	for _, id := range q.Chain {
		phases = append(phases, func(r Record) bool { return r.Kind == KindMandate && r.Value == id })
	}
	for _, p := range phases {
		if r := try(p); r != nil {
			return Verdict{Revoked: true, Record: r.ID, Kind: r.Kind}
		}
	}
	if down != nil {
		return Verdict{Revoked: true, Downgraded: true, Record: down.ID, Kind: down.Kind}
	}
	return Verdict{}
}

var (
	propSubjects = []string{"spiffe://ex.org/a/0", "spiffe://ex.org/a/1", "spiffe://ex.org/a/2", "spiffe://ex.org/b/0",
		"spiffe://ex.org/a/*", "spiffe://ex.org/**", "spiffe://ex.org/b/x-*"}
	propTasks    = []string{"t0", "t1", "t2"}
	propMandates = []string{"m0", "m1", "m2", "m3"}
)

func randRecord(rng *rand.Rand, id string, now time.Time) Record {
	r := Record{ID: id, Expires: now.Add(time.Hour)}
	if rng.IntN(5) == 0 {
		r.Expires = now.Add(-time.Minute)
	}
	switch rng.IntN(3) {
	case 0:
		r.Kind, r.Value = KindSubject, propSubjects[rng.IntN(len(propSubjects))]
	case 1:
		r.Kind, r.Value = KindTask, propTasks[rng.IntN(len(propTasks))]
	default:
		r.Kind, r.Value = KindMandate, propMandates[rng.IntN(len(propMandates))]
	}
	if rng.IntN(3) == 0 {
		r.Intents = []string{"read"}
		if rng.IntN(2) == 0 {
			r.Intents = append(r.Intents, "list")
		}
	}
	return r
}

func propQueries() []Query {
	var qs []Query
	for _, sub := range []string{"spiffe://ex.org/a/0", "spiffe://ex.org/a/1", "spiffe://ex.org/a/2", "spiffe://ex.org/b/0",
		"spiffe://ex.org/b/x-1", "spiffe://ex.org/c", "spiffe://other.org/a/0"} {
		for _, task := range []string{"", "t0", "t1", "t2"} {
			for _, chain := range [][]string{nil, {"m0"}, {"m1", "m2"}, {"m9", "m3"}} {
				for _, in := range []string{"", "read", "list", "write"} {
					qs = append(qs, Query{Subject: sub, Task: task, Chain: chain, Intent: in})
				}
			}
		}
	}
	return qs
}

// snapshot is every query's verdict on s.
func snapshot(s *Set, now time.Time, qs []Query) []Verdict {
	out := make([]Verdict, len(qs))
	for i, q := range qs {
		out[i] = s.Check(now, q)
	}
	return out
}

func TestWithMatchesNaive(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	qs := propQueries()
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 7))
		model := map[string]Record{}
		set := Empty()
		var prev *Set
		var prevVerdicts []Verdict
		var prevRecords []Record
		for step := range 40 {
			var put []Record
			var del []string
			used := map[string]bool{}
			for range rng.IntN(12) {
				id := fmt.Sprintf("r%d", rng.IntN(60))
				if used[id] {
					continue
				}
				used[id] = true
				if rng.IntN(4) == 0 {
					del = append(del, id)
				} else {
					put = append(put, randRecord(rng, id, now))
				}
			}
			next, err := set.With(put, del)
			if err != nil {
				t.Fatalf("seed %d step %d: With: %v", seed, step, err)
			}
			for _, id := range del {
				delete(model, id)
			}
			for _, r := range put {
				model[r.ID] = r
			}
			// The Set With started from is unchanged.
			if prev != nil {
				if got := snapshot(prev, now, qs); !slices.EqualFunc(got, prevVerdicts, func(a, b Verdict) bool { return a == b }) {
					t.Fatalf("seed %d step %d: an older Set changed under With", seed, step)
				}
				if !recordsEqual(prev.Records(), prevRecords) {
					t.Fatalf("seed %d step %d: an older Set's records changed", seed, step)
				}
			}
			prev, set = set, next
			prevVerdicts, prevRecords = snapshot(prev, now, qs), prev.Records()

			if set.Len() != len(model) {
				t.Fatalf("seed %d step %d: Len %d, want %d", seed, step, set.Len(), len(model))
			}
			want := slices.SortedFunc(maps.Values(model), func(a, b Record) int { return strings.Compare(a.ID, b.ID) })
			if !recordsEqual(set.Records(), want) {
				t.Fatalf("seed %d step %d: Records differ from the model", seed, step)
			}
			rebuilt, err := NewSet(slices.Collect(maps.Values(model)))
			if err != nil {
				t.Fatal(err)
			}
			for _, q := range qs {
				w := naiveCheck(model, now, q)
				if got := set.Check(now, q); got != w {
					t.Fatalf("seed %d step %d: With-built Check(%+v) = %+v, naive %+v", seed, step, q, got, w)
				}
				if got := rebuilt.Check(now, q); got != w {
					t.Fatalf("seed %d step %d: NewSet Check(%+v) = %+v, naive %+v", seed, step, q, got, w)
				}
			}
		}
	}
}

func recordsEqual(a, b []Record) bool {
	return slices.EqualFunc(a, b, func(x, y Record) bool {
		return x.ID == y.ID && x.Kind == y.Kind && x.Value == y.Value && x.Expires.Equal(y.Expires) && slices.Equal(x.Intents, y.Intents)
	})
}

func TestWithErrors(t *testing.T) {
	exp := time.Now().Add(time.Hour)
	base, err := NewSet([]Record{{ID: "a", Kind: KindTask, Value: "t", Expires: exp}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		put  []Record
		del  []string
	}{
		{"invalid record", []Record{{ID: "b", Kind: KindSubject, Value: "spiffe://x/a?b", Expires: exp}}, nil},
		{"bad pattern", []Record{{ID: "b", Kind: KindSubject, Value: "spiffe://x/**/y", Expires: exp}}, nil},
		{"put twice", []Record{{ID: "b", Kind: KindTask, Value: "t", Expires: exp}, {ID: "b", Kind: KindTask, Value: "u", Expires: exp}}, nil},
		{"put and deleted", []Record{{ID: "a", Kind: KindTask, Value: "u", Expires: exp}}, []string{"a"}},
		{"valid then invalid", []Record{{ID: "c", Kind: KindTask, Value: "x", Expires: exp}, {ID: "d", Kind: KindTask, Value: "y"}}, []string{"a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if s, err := base.With(tt.put, tt.del); err == nil {
				t.Fatalf("With accepted it: %d records", s.Len())
			}
			if base.Len() != 1 || !base.Check(time.Now(), Query{Subject: "spiffe://x/y", Task: "t"}).Revoked {
				t.Fatal("a failed With changed the Set")
			}
			if base.Check(time.Now(), Query{Subject: "spiffe://x/y", Task: "x"}).Revoked {
				t.Fatal("a failed With changed the Set")
			}
		})
	}
	if _, err := NewSet([]Record{{ID: "a", Kind: KindTask, Value: "t", Expires: exp}, {ID: "a", Kind: KindTask, Value: "u", Expires: exp}}); err == nil {
		t.Fatal("NewSet accepted a duplicate ID")
	}
	// Deleting an absent ID is not an error and changes nothing.
	s, err := base.With(nil, []string{"zzz"})
	if err != nil || s.Len() != 1 {
		t.Fatalf("With(nil, [zzz]) = %v, %v", s, err)
	}
}

// TestTrieCollisions drives the trie with chosen hashes: full 64-bit
// collisions, keys sharing long hash prefixes, and removals that fold
// nodes back, checked against a map after every step and for
// persistence of the older tries.
func TestTrieCollisions(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	hashes := []uint64{0, 1, 1 << 60, 1<<60 | 1, ^uint64(0), ^uint64(0) >> 1, 0x0123456789abcdef}
	type kv struct {
		h   uint64
		key string
	}
	var keys []kv
	for i := range 40 {
		keys = append(keys, kv{hashes[i%len(hashes)], fmt.Sprintf("k%d", i)})
	}
	var tr trie[int]
	model := map[string]int{}
	type past struct {
		tr    trie[int]
		model map[string]int
	}
	var history []past
	for step := range 400 {
		ed := &edit{}
		for range 1 + rng.IntN(5) {
			k := keys[rng.IntN(len(keys))]
			if rng.IntN(3) == 0 {
				tr.deleteH(ed, k.h, k.key)
				delete(model, k.key)
			} else {
				v := rng.IntN(1000)
				if l := tr.putH(ed, k.h, k.key, v); l.val != v || l.key != k.key {
					t.Fatalf("step %d: putH returned leaf %v", step, l)
				}
				model[k.key] = v
			}
		}
		checkShape(t, tr.root, 0, true)
		history = append(history, past{tr, maps.Clone(model)})
		for _, p := range history[max(0, len(history)-5):] {
			if p.tr.n != len(p.model) {
				t.Fatalf("step %d: n = %d, want %d", step, p.tr.n, len(p.model))
			}
			for _, k := range keys {
				got := p.tr.getH(k.h, k.key)
				want, ok := p.model[k.key]
				if ok != (got != nil) || (ok && got.val != want) {
					t.Fatalf("step %d: key %s: got %v, want %v %v", step, k.key, got, want, ok)
				}
			}
			seen := 0
			p.tr.each(func(*tleaf[int]) { seen++ })
			if seen != len(p.model) {
				t.Fatalf("step %d: each saw %d keys, want %d", step, seen, len(p.model))
			}
		}
	}
}

// checkShape fails unless n is canonical: its maps and arrays agree,
// and no node below the root holds a single leaf and nothing else (it
// would have been folded into its parent).
func checkShape[V any](t *testing.T, n *tnode[V], shift uint, root bool) {
	t.Helper()
	if n == nil {
		return
	}
	if bits.OnesCount32(n.datamap) != len(n.leaves) || bits.OnesCount32(n.nodemap) != len(n.children) ||
		n.datamap&n.nodemap != 0 {
		t.Fatalf("node at shift %d: maps %b/%b for %d leaves and %d children", shift, n.datamap, n.nodemap,
			len(n.leaves), len(n.children))
	}
	if !root && (n.lone() != nil || len(n.leaves)+len(n.children)+len(n.coll) == 0) {
		t.Fatalf("node at shift %d holds a lone leaf or nothing", shift)
	}
	for _, c := range n.children {
		checkShape(t, c, shift+tbits, false)
	}
}

func TestCheckDoesNotAllocate(t *testing.T) {
	now := time.Now()
	s := benchSet(t, 5000)
	qs := []Query{
		{Subject: "spiffe://example.org/fleet/agent-17"},
		{Subject: "spiffe://example.org/clean", Task: "task-3", Chain: []string{"m-1", "m-2"}, Intent: "read"},
		{Subject: "spiffe://example.org/team-3/x", Task: "t"},
	}
	for _, q := range qs {
		if n := testing.AllocsPerRun(100, func() { s.Check(now, q) }); n != 0 {
			t.Errorf("Check(%+v) allocates %v times", q, n)
		}
	}
	if !s.Check(now, qs[0]).Revoked || s.Check(now, qs[1]).Revoked || !s.Check(now, qs[2]).Revoked {
		t.Fatal("benchmark set answers wrongly")
	}
}

// benchRecords is n literal subject revocations plus a few tasks,
// mandates, downgrades and patterns, as a control plane would hold.
func benchRecords(prefix string, n int) []Record {
	exp := time.Now().Add(time.Hour)
	out := make([]Record, 0, n)
	for i := range n {
		r := Record{ID: fmt.Sprintf("%s-%d", prefix, i), Kind: KindSubject, Expires: exp,
			Value: fmt.Sprintf("spiffe://example.org/fleet/%s-%d", prefix, i)}
		switch {
		case i%100 == 1:
			r.Kind, r.Value = KindTask, fmt.Sprintf("task-%s-%d", prefix, i)
		case i%100 == 2:
			r.Kind, r.Value = KindMandate, fmt.Sprintf("mandate-%s-%d", prefix, i)
		case i%100 == 3:
			r.Intents = []string{"read"}
		case i%1000 == 4:
			r.Value = fmt.Sprintf("spiffe://example.org/team-%d/**", i/1000)
		}
		out = append(out, r)
	}
	return out
}

func benchSet(tb testing.TB, n int) *Set {
	tb.Helper()
	recs := benchRecords("agent", n)
	s, err := NewSet(recs)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func BenchmarkCheck(b *testing.B) {
	s := benchSet(b, 50_000)
	now := time.Now()
	for _, bc := range []struct {
		name string
		q    Query
	}{
		{"miss", Query{Subject: "spiffe://example.org/clean", Task: "task-1", Chain: []string{"m-1", "m-2"}, Intent: "read"}},
		{"subject-hit", Query{Subject: "spiffe://example.org/fleet/agent-4217"}},
		{"mandate-hit", Query{Subject: "spiffe://example.org/clean", Chain: []string{"m-0", "mandate-agent-302"}}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				s.Check(now, bc.q)
			}
		})
	}
}

func BenchmarkNewSet(b *testing.B) {
	recs := benchRecords("agent", 50_000)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := NewSet(recs); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWith is one push of the revocation storm on a replica: 1,000
// new records on top of 50,000.
func BenchmarkWith(b *testing.B) {
	s := benchSet(b, 50_000)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := s.With(benchRecords(fmt.Sprintf("b%d", i), 1000), nil); err != nil {
			b.Fatal(err)
		}
	}
}
