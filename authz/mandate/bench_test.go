package mandate

import (
	"testing"
)

// BenchmarkVerifyFirstSight measures a full verification: parsing, header
// checks, Ed25519 and claim validation (cache disabled, so every call is a
// first sight).
func BenchmarkVerifyFirstSight(b *testing.B) {
	f := newFixture(b, func(c *VerifierConfig) { c.CacheSize = -1 })
	tok := f.sign(b, nil)
	b.ReportAllocs()
	b.SetBytes(int64(len(tok)))
	for b.Loop() {
		if _, err := f.v.Verify(tok); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyCached measures a cache hit: SHA-256 of the token, a shard
// lookup, the generation and time checks.
func BenchmarkVerifyCached(b *testing.B) {
	f := newFixture(b, nil)
	tok := f.sign(b, nil)
	if _, err := f.v.Verify(tok); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(tok)))
	for b.Loop() {
		if _, err := f.v.Verify(tok); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyCachedParallel is the cache hit under concurrent callers.
func BenchmarkVerifyCachedParallel(b *testing.B) {
	f := newFixture(b, nil)
	tok := f.sign(b, nil)
	if _, err := f.v.Verify(tok); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := f.v.Verify(tok); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkScopeAllows measures the per-request scope check on verified
// (pre-compiled) claims.
func BenchmarkScopeAllows(b *testing.B) {
	f := newFixture(b, nil)
	c, err := f.v.Verify(f.sign(b, nil))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if !c.Scope.Allows("spiffe://example.org/svc/tickets", "tickets", "GET", "/tickets/1/x", "", "") {
			b.Fatal("denied")
		}
	}
}

func TestCacheHitAllocations(t *testing.T) {
	if testing.Short() {
		t.Skip("allocation count")
	}
	f := newFixture(t, nil)
	tok := f.sign(t, nil)
	if _, err := f.v.Verify(tok); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := f.v.Verify(tok); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > raceAllocSlack {
		t.Fatalf("cache hit allocates %.1f times per call", allocs)
	}
}

// BenchmarkVerifyAcrossUnchangedPushes is a cache hit with a push of the
// same key set before every verification, as replicas see when the
// control plane pushes revocations or policies: the cache stays warm.
func BenchmarkVerifyAcrossUnchangedPushes(b *testing.B) {
	f := newFixture(b, nil)
	tok := f.sign(b, nil)
	keys := []Key{{ID: f.kid, Public: f.pub}}
	if _, err := f.v.Verify(tok); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := f.v.SetKeys(keys); err != nil {
			b.Fatal(err)
		}
		if _, err := f.v.Verify(tok); err != nil {
			b.Fatal(err)
		}
	}
}
