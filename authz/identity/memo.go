package identity

import (
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mandate-dev/mandate/internal/slotcache"
)

// memo remembers the principals a Resolver has recently validated, so a
// busy peer's ID is parsed once, not on every request. It is direct
// mapped (a fixed array of slots, eviction by collision) and holds only
// IDs that parsed: a hit returns exactly what ParseID and the Resolver's
// immutable configuration said about that exact string.
type memo = slotcache.Cache[memoEntry]

const memoSlots = 512

type memoEntry struct {
	s       string // the principal, copied out of the request
	id      spiffeid.ID
	proxy   bool // a trusted proxy (TrustedProxies)
	trusted bool // in one of TrustDomains
}

// lookup returns what is known about principal s, parsing it (ParseID)
// on a miss. Errors are ParseID's and are not remembered.
func (r *Resolver) lookup(s string) (*memoEntry, error) {
	slot, _ := r.memo.Slot(s, 0)
	if e := slot.Load(); e != nil && e.s == s {
		return e, nil
	}
	s = strings.Clone(s) // the entry outlives the request
	id, err := ParseID(s)
	if err != nil {
		return nil, err
	}
	_, proxy := r.proxies[s]
	_, trusted := r.domains[id.TrustDomain()]
	e := &memoEntry{s: s, id: id, proxy: proxy, trusted: trusted}
	slot.Store(e)
	return e, nil
}
