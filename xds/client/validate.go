package xdsclient

import (
	"fmt"
	"slices"

	"google.golang.org/protobuf/types/known/anypb"

	"github.com/mandate-dev/mandate/authz/revocation"
	"github.com/mandate-dev/mandate/policies"
	"github.com/mandate-dev/mandate/xds/mandatev1"
	"github.com/mandate-dev/mandate/xds/resource"
)

// entry is one resource as the server sent it: kept raw so that the set
// the server believes we hold is tracked even when it does not validate.
type entry struct {
	version string
	res     *anypb.Any
}

// compiled is the validated form of one type's resources.
type compiled struct {
	policies    *policies.Set
	revocations *revocation.Set
	approvals   []*mandatev1.Approval
	keys        []*mandatev1.VerificationKey
}

// emptyCompiled is a type's value before anything validated.
func emptyCompiled(typeURL string) compiled {
	if typeURL == mandatev1.RevocationTypeURL {
		return compiled{revocations: revocation.Empty()}
	}
	return compiled{}
}

// decodeOne unmarshals one resource and checks it on its own
// (resource.Decode and the kind's checks): a *mandatev1.Policy (compiled
// with the whole set), or an *Approval or *VerificationKey validated.
// Revocations come in shards: see decodeShard.
func decodeOne(typeURL, name string, e entry) (any, error) {
	m, err := resource.Decode(typeURL, name, e.res)
	if err != nil {
		return nil, err
	}
	switch m := m.(type) {
	case *mandatev1.Approval:
		return m, resource.ValidateApproval(m)
	case *mandatev1.VerificationKey:
		return m, resource.ValidateKey(m)
	}
	return m, nil
}

// validate checks a whole type's resource set and compiles it.
func validate(typeURL string, entries map[string]entry) (compiled, error) {
	dirty := make(map[string]struct{}, len(entries))
	for n := range entries {
		dirty[n] = struct{}{}
	}
	if typeURL == mandatev1.RevocationTypeURL {
		set, err := buildRevocations(revocation.Empty(), &revState{}, entries, dirty, nil)
		return compiled{revocations: set}, err
	}
	return build(typeURL, compiled{}, nil, entries, dirty, map[string]any{}, nil)
}

// build validates and compiles the next set of a type other than
// Revocation (see buildRevocations): good and dec (the decoded form of
// each resource in good) are what was last applied, received is what the
// server says we hold, and dirty names the resources that differ between
// the two. Only the dirty ones are decoded and validated; decoded counts
// them. It puts the decoded form of the dirty names still received in
// staged (an empty map, for commit) and leaves its other arguments
// unchanged.
func build(typeURL string, good compiled, dec map[string]any, received map[string]entry,
	dirty map[string]struct{}, staged map[string]any, decoded *int) (compiled, error) {
	var gone []string
	for name := range dirty {
		e, ok := received[name]
		if !ok {
			gone = append(gone, name)
			continue
		}
		if decoded != nil {
			*decoded++
		}
		v, err := decodeOne(typeURL, name, e)
		if err != nil {
			return compiled{}, err
		}
		staged[name] = v
	}
	// The other types are small: assemble the whole set, in name order.
	names := make([]string, 0, len(dec)+len(staged))
	for n := range dec {
		if _, changed := dirty[n]; !changed {
			names = append(names, n)
		}
	}
	for n := range staged {
		names = append(names, n)
	}
	slices.Sort(names)
	get := func(n string) any {
		if v, ok := staged[n]; ok {
			return v
		}
		return dec[n]
	}
	switch typeURL {
	case mandatev1.PolicyTypeURL:
		ps := make([]*mandatev1.Policy, len(names))
		for i, n := range names {
			ps[i] = get(n).(*mandatev1.Policy)
		}
		set, err := resource.CompilePolicies(ps)
		return compiled{policies: set}, err
	case mandatev1.ApprovalTypeURL:
		as := make([]*mandatev1.Approval, len(names))
		for i, n := range names {
			as[i] = get(n).(*mandatev1.Approval)
		}
		return compiled{approvals: as}, nil
	case mandatev1.VerificationKeyTypeURL:
		ks := make([]*mandatev1.VerificationKey, len(names))
		for i, n := range names {
			ks[i] = get(n).(*mandatev1.VerificationKey)
		}
		return compiled{keys: ks}, nil
	}
	return compiled{}, fmt.Errorf("unsupported resource type %q", typeURL)
}

func short(typeURL string) string { return resource.Short(typeURL) }

// revState is what a replica keeps of the Revocation type besides its
// Set: for each shard it holds, the shard's bytes, once, as a string.
// The Set's records are substrings of it (shardDecoder), so keeping it
// costs no memory of its own, and the ids of a shard's records are read
// back from it when the shard changes: nothing a garbage collection has
// to scan record by record.
type revState struct {
	shards map[string]string
	// staged holds, during a build, the bytes of each dirty shard still
	// received; ids is the scratch the new shard's ids are gathered in.
	staged map[string]string
	ids    []string
}

// maxIDScratch bounds the id scratch kept for the next shard.
const maxIDScratch = 4096

// buildRevocations is build for the Revocation type, whose resources are
// shards of records (mandatev1.RevocationShard): each dirty shard is
// decoded straight into the next set (its records validated and put, a
// record of the same id replaced), and the records it no longer holds
// leave the set. decoded counts records. rs.staged maps each dirty shard
// still received to its bytes (for revState.commit); rs.shards is
// unchanged.
func buildRevocations(good *revocation.Set, rs *revState, received map[string]entry,
	dirty map[string]struct{}, decoded *int) (*revocation.Set, error) {
	if rs.staged == nil {
		rs.staged = make(map[string]string, len(dirty))
	}
	ed := good.Edit()
	for name := range dirty {
		old, hadOld := rs.shards[name]
		e, ok := received[name]
		if !ok {
			if err := eachShardID(name, old, func(id string) { ed.Delete(id) }); err != nil {
				return nil, err
			}
			continue
		}
		raw, ids, err := decodeShard(name, e, ed, rs.ids[:0])
		if cap(ids) <= maxIDScratch {
			rs.ids = ids[:0]
		}
		if err != nil {
			return nil, err
		}
		if decoded != nil {
			*decoded += len(ids)
		}
		if hadOld {
			// A record belongs to one shard only: what left this one is gone.
			if err := eachShardID(name, old, func(id string) {
				if _, held := slices.BinarySearch(ids, id); !held {
					ed.Delete(id)
				}
			}); err != nil {
				return nil, err
			}
		}
		rs.staged[name] = raw
	}
	return ed.Set(), nil
}

// commit records that the Set now holds every dirty shard.
func (rs *revState) commit(dirty map[string]struct{}) {
	for name := range dirty {
		if raw, ok := rs.staged[name]; ok {
			rs.shards[name] = raw
		} else {
			delete(rs.shards, name)
		}
	}
}

// reset empties the staging map (a large one is dropped) and the id
// scratch (which would keep the shards it points into alive).
func (rs *revState) reset() {
	clear(rs.ids[:cap(rs.ids)])
	rs.ids = rs.ids[:0]
	if len(rs.staged) > maxScratch {
		rs.staged = nil
	} else {
		clear(rs.staged)
	}
}
