package plane

import (
	"context"

	"github.com/mandate-dev/mandate/xds/mandatev1"
	"github.com/mandate-dev/mandate/xds/resource"
)

func newPolicy() *mandatev1.Policy         { return &mandatev1.Policy{} }
func newRevocation() *mandatev1.Revocation { return &mandatev1.Revocation{} }

// load reads what the store holds of one type, decoded, and its version.
func load[M resource.Named](ctx context.Context, st Store, typeURL string, _ func() M) (map[string]M, uint64, error) {
	items, v, err := st.List(ctx, typeURL)
	if err != nil {
		return nil, 0, err
	}
	out := make(map[string]M, len(items))
	for _, it := range items {
		m, err := resource.Unmarshal(typeURL, it.Name, it.Value)
		if err != nil {
			return nil, 0, err
		}
		out[it.Name] = m.(M)
	}
	return out, v, nil
}
