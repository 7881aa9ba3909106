package xdsserver

import (
	"slices"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// reshard files the records put (update) and removed into their shards
// (ts.current already holds the result) and returns what the cache must
// change: the new content of every shard touched, and the shards left
// empty. Its cost is in the records changed and the shards they touch,
// not in the records held. Called under setMu.
func (ts *typeState) reshard(update map[string]types.Resource, remove []string) (map[string]types.Resource, []string) {
	touched := make(map[uint32]struct{}, min(len(update)+len(remove), mandatev1.RevocationShards))
	for name := range update {
		i := mandatev1.RevocationShardOf(name)
		names := ts.shards[i]
		if at, found := slices.BinarySearch(names, name); !found {
			ts.shards[i] = slices.Insert(names, at, name)
		}
		touched[i] = struct{}{}
	}
	for _, name := range remove {
		i := mandatev1.RevocationShardOf(name)
		names := ts.shards[i]
		if at, found := slices.BinarySearch(names, name); found {
			ts.shards[i] = slices.Delete(names, at, at+1)
		}
		touched[i] = struct{}{}
	}
	put := make(map[string]types.Resource, len(touched))
	var gone []string
	for i := range touched {
		names := ts.shards[i]
		if len(names) == 0 {
			delete(ts.shards, i)
			gone = append(gone, mandatev1.RevocationShardName(i))
			continue
		}
		shard := &mandatev1.RevocationShard{Name: mandatev1.RevocationShardName(i),
			Revocations: make([]*mandatev1.Revocation, len(names))}
		for j, n := range names {
			shard.Revocations[j] = ts.current[n].(*mandatev1.Revocation)
		}
		put[shard.Name] = shard
	}
	return put, gone
}
