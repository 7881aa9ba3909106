package mandate

import (
	"testing"
	"time"
)

// A push that does not change the keys keeps cached verifications; one
// that does (a key added, removed, or its window changed) drops them.
func TestSetKeysSameSetKeepsCache(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.sign(t, nil)
	if _, err := f.v.Verify(tok); err != nil {
		t.Fatal(err)
	}
	gen := f.v.keys.Load().gen
	kid2, pub2, _ := seededKey(2)
	same := []Key{{ID: kid2, Public: pub2}, {ID: f.kid, Public: f.pub}}
	if err := f.v.SetKeys(same); err != nil {
		t.Fatal(err)
	}
	if g := f.v.keys.Load().gen; g == gen {
		t.Fatal("adding a key did not start a new generation")
	}
	gen = f.v.keys.Load().gen
	reordered := []Key{{ID: f.kid, Public: f.pub}, {ID: kid2, Public: pub2}}
	for i := 0; i < 3; i++ {
		if err := f.v.SetKeys(reordered); err != nil {
			t.Fatal(err)
		}
	}
	if g := f.v.keys.Load().gen; g != gen {
		t.Fatalf("pushing the same key set moved the generation %d -> %d: the verification cache is flushed", gen, g)
	}
	windowed := []Key{{ID: f.kid, Public: f.pub, NotAfter: t0.Add(time.Hour)}, {ID: kid2, Public: pub2}}
	if err := f.v.SetKeys(windowed); err != nil {
		t.Fatal(err)
	}
	if g := f.v.keys.Load().gen; g == gen {
		t.Fatal("changing a key's window kept the old generation")
	}
}
