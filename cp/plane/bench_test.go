package plane

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/authz/revocation"
	"github.com/mandate-dev/mandate/xds/mandatev1"
	"github.com/mandate-dev/mandate/xds/resource"
)

const (
	benchStored = 50_000
	benchBatch  = 1000
)

func benchRecords(prefix string, n int) []revocation.Record {
	exp := time.Now().Add(time.Hour)
	out := make([]revocation.Record, n)
	for i := range out {
		out[i] = revocation.Record{Kind: revocation.KindSubject,
			Value: fmt.Sprintf("spiffe://example.org/fleet/%s-%d", prefix, i), Expires: exp, Reason: "bench"}
	}
	return out
}

// loaded is a plane holding benchStored records.
func loaded(b *testing.B) *env {
	b.Helper()
	e := open(b, b.TempDir())
	for i := range benchStored / MaxRevokeBatch {
		if _, _, err := e.p.RevokeMany(context.Background(), benchRecords(fmt.Sprintf("pre%d", i), MaxRevokeBatch), "op"); err != nil {
			b.Fatal(err)
		}
	}
	return e
}

// BenchmarkRevokeMany is one batch of 1,000 stored and published over a
// plane that already holds 50,000 records: validation, the synced bbolt
// transaction with 1,000 audit entries, and the xDS publish.
func BenchmarkRevokeMany(b *testing.B) {
	e := loaded(b)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, _, err := e.p.RevokeMany(ctx, benchRecords(fmt.Sprintf("b%d", i), benchBatch), "op"); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(benchBatch)*float64(b.N)/b.Elapsed().Seconds(), "revocations/s")
}

// BenchmarkPublishRevocations is the xDS part alone: SetRevocations with
// 50,000 records of which 1,000 are new (what the plane calls per batch).
func BenchmarkPublishRevocations(b *testing.B) {
	e := loaded(b)
	base := map[string]*mandatev1.Revocation{}
	rs, _ := e.p.Revocations(true)
	for _, r := range rs {
		base[r.GetName()] = r
	}
	for i := 0; b.Loop(); i++ {
		next := maps.Clone(base)
		for j := range benchBatch {
			name := fmt.Sprintf("r-%d-%d", i, j)
			next[name] = &mandatev1.Revocation{Name: name, Kind: "subject", Value: "spiffe://example.org/x/" + name,
				Expires: timestamppb.New(time.Now().Add(time.Hour)), CreatedAt: timestamppb.Now()}
		}
		if _, err := e.xds.SetRevocations(next); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUpdateRevocations is the xDS part as the plane does it now:
// UpdateRevocations with the 1,000 new records only, over 50,000 held.
func BenchmarkUpdateRevocations(b *testing.B) {
	e := loaded(b)
	for i := 0; b.Loop(); i++ {
		put := make(map[string]*mandatev1.Revocation, benchBatch)
		for j := range benchBatch {
			name := fmt.Sprintf("r-%d-%d", i, j)
			put[name] = &mandatev1.Revocation{Name: name, Kind: "subject", Value: "spiffe://example.org/x/" + name,
				Expires: timestamppb.New(time.Now().Add(time.Hour)), CreatedAt: timestamppb.Now()}
		}
		if _, err := e.xds.UpdateRevocations(put, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReplicaRevocationSet is what a replica's xDS client does per
// revocation push: decode nothing (already decoded here), then convert,
// validate and index all 51,000 records (resource.RevocationSet).
func BenchmarkReplicaRevocationSet(b *testing.B) {
	e := loaded(b)
	if _, _, err := e.p.RevokeMany(context.Background(), benchRecords("last", benchBatch), "op"); err != nil {
		b.Fatal(err)
	}
	rs, _ := e.p.Revocations(true)
	rs = slices.Clip(rs)
	for b.Loop() {
		if _, err := resource.RevocationSet(rs); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReplicaDecode is the other per-push cost of a replica's xDS
// client: unmarshalling every Revocation it holds from its Any.
func BenchmarkReplicaDecode(b *testing.B) {
	e := loaded(b)
	rs, _ := e.p.Revocations(true)
	raw := make([][]byte, len(rs))
	for i, r := range rs {
		var err error
		if raw[i], err = proto.Marshal(r); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		for _, d := range raw {
			var r mandatev1.Revocation
			if err := proto.Unmarshal(d, &r); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkRevokeOne is the one-record-per-call path (Revoke) over the
// same 50,000 records: what the Admin API offered before RevokeBatch.
func BenchmarkRevokeOne(b *testing.B) {
	e := loaded(b)
	ctx := context.Background()
	exp := time.Now().Add(time.Hour)
	for i := 0; b.Loop(); i++ {
		if _, err := e.p.Revoke(ctx, revocation.Record{Kind: revocation.KindSubject,
			Value: fmt.Sprintf("spiffe://example.org/fleet/one-%d", i), Expires: exp}, "op"); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "revocations/s")
}
