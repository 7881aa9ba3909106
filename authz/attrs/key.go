package attrs

import (
	"hash/maphash"
	"slices"

	"github.com/mandate-dev/mandate/authz/decisioncache"
	"github.com/mandate-dev/mandate/authz/mcp"
	"github.com/mandate-dev/mandate/policies"
)

// KeySelection says which request headers and MCP arguments the loaded
// policies read: only those go into the cache key, unless a condition
// reads them all (headers: all written; MCP arguments: a 128-bit hash
// keyed by ArgSeeds).
type KeySelection struct {
	AllHeaders   bool
	Headers      []string // lowercased, sorted
	AllArguments bool
	Arguments    []string // sorted
	ArgSeeds     [2]maphash.Seed
}

// NewKeySelection returns the selection of a policy set, with fresh seeds.
func NewKeySelection(set *policies.Set) KeySelection {
	if set == nil {
		return KeySelection{}
	}
	return KeySelection{
		AllHeaders: set.ReadsAllHeaders(), Headers: set.HeaderKeys(),
		AllArguments: set.ReadsAllMCPArguments(), Arguments: set.MCPArgumentKeys(),
		ArgSeeds: [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
	}
}

// WriteKey writes into k every field of r a policy can read, each
// length-prefixed, in sections: the request line and identity, the
// mandate, the MCP call, the route labels, the headers policies read. Now
// is left out:
// a decision that read the time is not cacheable (policies.Decision).
// A new input group of policies.Request gets a section of its own here;
// TestKeyCoversRequest fails until it does.
func WriteKey(k *decisioncache.Key, epoch uint64, r *policies.Request, sel *KeySelection) {
	writeKey(k, epoch, r, sel, nil, nil)
}

// WriteKey writes the cache key of a.Request (see WriteKey): the same
// bytes, with what the MCP memo shares between requests (the arguments'
// part of the key) computed once, and argument values found where the
// parse noted them.
func (a *Attributes) WriteKey(k *decisioncache.Key, epoch uint64, sel *KeySelection) {
	writeKey(k, epoch, &a.Request, sel, a.mcpShared, &a.MCP)
}

// writeKey is WriteKey; src, when not nil, is the parsed MCP request
// r.MCP was made from.
func writeKey(k *decisioncache.Key, epoch uint64, r *policies.Request, sel *KeySelection, ms *mcpShared, src *mcp.Request) {
	k.Reset()
	k.Uint(epoch)
	k.String(r.Subject)
	k.String(r.Destination)
	k.String(r.Host)
	k.String(r.Method)
	k.String(r.Path)
	k.String(r.GRPCService)
	k.String(r.GRPCMethod)
	k.String(r.Intent)
	k.String(r.Task)
	writeMandate(k, r.Mandate)
	writeMCP(k, r.MCP, sel, ms, src)
	writeSorted(k, r.Labels)
	if sel.AllHeaders {
		writeSorted(k, r.Headers)
		return
	}
	for _, h := range sel.Headers {
		v, ok := r.Headers[h]
		if ok {
			k.Uint(1)
		} else {
			k.Uint(0)
		}
		k.String(v)
	}
}

func writeMandate(k *decisioncache.Key, m *policies.Mandate) {
	if m == nil {
		k.Uint(0)
		return
	}
	k.Uint(1)
	k.String(m.ID)
	k.String(m.Issuer)
	k.String(m.Task)
	k.String(m.Intent)
	k.Uint(uint64(m.ExpiresAt.Unix()))
	k.Uint(uint64(len(m.Chain)))
	for _, s := range m.Chain {
		k.String(s)
	}
}

// writeSorted writes a map's entries in key order, preceded by their count.
func writeSorted(k *decisioncache.Key, m map[string]string) {
	k.Uint(uint64(len(m)))
	if len(m) == 0 {
		return
	}
	if len(m) == 1 { // route labels often hold one: no sort, no second lookup
		for name, v := range m {
			k.String(name)
			k.String(v)
		}
		return
	}
	var stack [8]string
	keys := stack[:0]
	for name := range m {
		keys = append(keys, name)
	}
	slices.Sort(keys)
	for _, name := range keys {
		k.String(name)
		k.String(m[name])
	}
}
