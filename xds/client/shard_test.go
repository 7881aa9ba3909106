package xdsclient

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/authz/revocation"
	"github.com/mandate-dev/mandate/xds/mandatev1"
	"github.com/mandate-dev/mandate/xds/resource"
)

// shardName is the shard a record named record travels in.
func shardName(record string) string {
	return mandatev1.RevocationShardName(mandatev1.RevocationShardOf(record))
}

// shardOf wraps records (all of one shard, in name order) as the control
// plane sends them.
func shardOf(t testing.TB, name string, recs ...*mandatev1.Revocation) *anypb.Any {
	return anyOf(t, &mandatev1.RevocationShard{Name: name, Revocations: recs})
}

// wire is the Revocation records a control plane holds, by shard: delta
// turns record puts and deletes into the response it sends (every shard
// touched, whole, and the shards left empty removed).
type wire map[string]map[string]*mandatev1.Revocation

func (w wire) delta(t testing.TB, version string, put []*mandatev1.Revocation, del ...string) *discovery.DeltaDiscoveryResponse {
	touched := map[string]bool{}
	for _, r := range put {
		s := shardName(r.GetName())
		if w[s] == nil {
			w[s] = map[string]*mandatev1.Revocation{}
		}
		w[s][r.GetName()] = r
		touched[s] = true
	}
	for _, n := range del {
		s := shardName(n)
		delete(w[s], n)
		touched[s] = true
	}
	resp := &discovery.DeltaDiscoveryResponse{TypeUrl: mandatev1.RevocationTypeURL, SystemVersionInfo: version, Nonce: "n" + version}
	for _, s := range slices.Sorted(maps.Keys(touched)) {
		if len(w[s]) == 0 {
			delete(w, s)
			resp.RemovedResources = append(resp.RemovedResources, s)
			continue
		}
		var recs []*mandatev1.Revocation
		for _, n := range slices.Sorted(maps.Keys(w[s])) {
			recs = append(recs, w[s][n])
		}
		resp.Resources = append(resp.Resources, &discovery.Resource{Name: s, Version: version, Resource: shardOf(t, s, recs...)})
	}
	return resp
}

// recordsIn counts the records a response's shards carry.
func recordsIn(t testing.TB, r *discovery.DeltaDiscoveryResponse) int {
	n := 0
	for _, res := range r.GetResources() {
		var s mandatev1.RevocationShard
		if err := proto.Unmarshal(res.GetResource().GetValue(), &s); err != nil {
			t.Fatal(err)
		}
		n += len(s.GetRevocations())
	}
	return n
}

// twoInOneShard returns two record names that share a shard, in order.
func twoInOneShard() (string, string) {
	seen := map[uint32]string{}
	for i := 0; ; i++ {
		n := fmt.Sprintf("r%d", i)
		s := mandatev1.RevocationShardOf(n)
		if prev, ok := seen[s]; ok {
			return min(prev, n), max(prev, n)
		}
		seen[s] = n
	}
}

// TestMalformedShardNACKed: a shard that breaks the wire's rules, or a
// bad record inside an otherwise good shard, is NACKed like a bad record
// was, naming what is wrong, and the last good set stays.
func TestMalformedShardNACKed(t *testing.T) {
	a, b := twoInOneShard()
	s := shardName(a)
	good := func(n string) *mandatev1.Revocation { return taskRev(n, "t-"+n) }
	other := "x"
	for shardName(other) == s {
		other += "x"
	}
	tests := []struct {
		name    string
		res     *discovery.Resource
		wantErr string
	}{
		{"bad record among good ones", &discovery.Resource{Name: s, Resource: shardOf(t, s, good(a),
			&mandatev1.Revocation{Name: b, Kind: "subject", Value: "bob", Expires: timestamppb.New(farFuture)})}, fmt.Sprintf("Revocation %q", b)},
		{"record without expiry", &discovery.Resource{Name: s, Resource: shardOf(t, s, good(a),
			&mandatev1.Revocation{Name: b, Kind: "task", Value: "t"})}, "no expiry"},
		{"record in the wrong shard", &discovery.Resource{Name: s, Resource: shardOf(t, s, good(a), good(other))}, "not in this shard"},
		{"records out of order", &discovery.Resource{Name: s, Resource: shardOf(t, s, good(b), good(a))}, "out of order"},
		{"record repeated", &discovery.Resource{Name: s, Resource: shardOf(t, s, good(a), good(a))}, "out of order or repeated"},
		{"record without a name", &discovery.Resource{Name: s, Resource: shardOf(t, s, good(a), taskRev("", "t"))}, "empty name"},
		{"empty shard", &discovery.Resource{Name: s, Resource: shardOf(t, s)}, "no records"},
		{"shard names itself otherwise", &discovery.Resource{Name: s, Resource: shardOf(t, shardName(other), good(a))}, "names itself"},
		{"not a shard name", &discovery.Resource{Name: a, Resource: shardOf(t, a, good(a))}, "not a shard name"},
		{"a record, not a shard", &discovery.Resource{Name: s, Resource: anyOf(t, good(a))}, "has type"},
		{"no body", &discovery.Resource{Name: s}, "no resource body"},
		{"not decodable", &discovery.Resource{Name: s, Resource: &anypb.Any{TypeUrl: mandatev1.RevocationShardTypeURL, Value: []byte{0xff}}}, "decode"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newUnitClient(t)
			w := wire{}
			if reply := u.c.handle(w.delta(t, "1", []*mandatev1.Revocation{good("keep")})); reply.GetErrorDetail() != nil {
				t.Fatal(reply.GetErrorDetail())
			}
			before := u.c.state().Revocations
			tt.res.Version = "2"
			reply := u.c.handle(&discovery.DeltaDiscoveryResponse{TypeUrl: mandatev1.RevocationTypeURL, SystemVersionInfo: "2",
				Nonce: "n2", Resources: []*discovery.Resource{tt.res}})
			if reply.GetErrorDetail() == nil || !strings.Contains(reply.GetErrorDetail().GetMessage(), tt.wantErr) {
				t.Fatalf("answered %v, want a NACK containing %q", reply.GetErrorDetail(), tt.wantErr)
			}
			if st := u.c.state(); st.Revocations != before || st.Versions[mandatev1.RevocationTypeURL] != "1" {
				t.Fatal("a NACKed shard changed the applied state")
			}
		})
	}
}

// TestShardUpdateReplacesItsRecords: a shard received again holds the
// shard's whole content: records it no longer carries leave the set,
// records of other shards stay, and removing the shard removes its
// records.
func TestShardUpdateReplacesItsRecords(t *testing.T) {
	a, b := twoInOneShard()
	u := newUnitClient(t)
	w := wire{}
	if reply := u.c.handle(w.delta(t, "1", []*mandatev1.Revocation{taskRev(a, "ta"), taskRev(b, "tb"), taskRev("z", "tz")})); reply.GetErrorDetail() != nil {
		t.Fatal(reply.GetErrorDetail())
	}
	// b leaves the shard it shares with a: the shard is resent with a only.
	r := w.delta(t, "2", nil, b)
	if len(r.GetResources()) != 1 || r.GetResources()[0].GetName() != shardName(a) {
		t.Fatalf("delta %v, want the one shard of %s", r, a)
	}
	if reply := u.c.handle(r); reply.GetErrorDetail() != nil {
		t.Fatal(reply.GetErrorDetail())
	}
	if got := revocationsIn(u.last()); !slices.Equal(got, []string{a + "=ta", "z=tz"}) {
		t.Fatalf("after %s left its shard: %v", b, got)
	}
	// a leaves too: its shard is removed, and z stays.
	r = w.delta(t, "3", nil, a)
	if len(r.GetResources()) != 0 || !slices.Equal(r.GetRemovedResources(), []string{shardName(a)}) {
		t.Fatalf("delta %v, want the removal of shard %s", r, shardName(a))
	}
	if reply := u.c.handle(r); reply.GetErrorDetail() != nil {
		t.Fatal(reply.GetErrorDetail())
	}
	if got := revocationsIn(u.last()); !slices.Equal(got, []string{"z=tz"}) {
		t.Fatalf("after the shard's removal: %v", got)
	}
}

// FuzzShardDecoder: the replica's direct shard decoder accepts only what
// proto.Unmarshal and resource.RecordOf accept, and gives the same
// records; every shard the control plane marshals is accepted.
func FuzzShardDecoder(f *testing.F) {
	for _, sh := range []*mandatev1.RevocationShard{
		{Name: "rs-0001", Revocations: []*mandatev1.Revocation{taskRev("a", "t")}},
		{Name: "rs-ffff", Revocations: []*mandatev1.Revocation{
			{Name: "b", Kind: "subject", Value: "spiffe://e.org/*", Intents: []string{"read", "list"},
				Expires: timestamppb.New(farFuture), CreatedAt: timestamppb.New(farFuture.Add(-time.Hour)), Reason: "r", CreatedBy: "op"},
			{Name: "c", Kind: "mandate", Value: "m-1", Expires: &timestamppb.Timestamp{Seconds: 1, Nanos: 5}},
		}},
		{Name: "x", Revocations: []*mandatev1.Revocation{{Name: "d", Kind: "bogus", Expires: &timestamppb.Timestamp{Nanos: -1}}}},
	} {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(sh)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var got []revocation.Record
		d := shardDecoder{raw: data, str: string(data)}
		name, err := d.decode(func(r revocation.Record) error { got = append(got, r); return nil })
		var sh mandatev1.RevocationShard
		perr := proto.Unmarshal(data, &sh)
		if err != nil {
			return // refusing more than proto does is allowed
		}
		if perr != nil {
			t.Fatalf("decoder accepted what proto.Unmarshal refuses: %v", perr)
		}
		if name != sh.GetName() || len(got) != len(sh.GetRevocations()) {
			t.Fatalf("decoded %q with %d records, proto %q with %d", name, len(got), sh.GetName(), len(sh.GetRevocations()))
		}
		// A held shard's ids are read back from its bytes when it changes.
		var ids []string
		if err := eachShardID(name, string(data), func(id string) { ids = append(ids, id) }); err != nil {
			t.Fatalf("eachShardID refused a shard the decoder accepted: %v", err)
		}
		if len(ids) != len(got) {
			t.Fatalf("eachShardID gave %d ids, decoder %d records", len(ids), len(got))
		}
		for i := range got {
			if ids[i] != got[i].ID {
				t.Fatalf("id %d: eachShardID %q, decoder %q", i, ids[i], got[i].ID)
			}
		}
		for i, r := range sh.GetRevocations() {
			want, err := resource.RecordOf(r)
			if err != nil {
				t.Fatalf("decoder accepted record %d that RecordOf refuses: %v", i, err)
			}
			if !reflect.DeepEqual(got[i], want) {
				t.Fatalf("record %d: decoder %+v, proto %+v", i, got[i], want)
			}
		}
	})
}
