package attrs

import (
	"strings"
	"sync/atomic"

	"github.com/mandate-dev/mandate/authz/reqpath"
	"github.com/mandate-dev/mandate/internal/slotcache"
)

// lineMemo remembers the normalized path and host of recent requests, so
// a busy route's path and authority are checked once, not on every
// request. Both are pure functions of the raw :path, the route's path
// options and the raw authority, which an entry holds and a hit compares
// exactly. Direct mapped (eviction by collision); only inputs that passed
// are kept, so a refused path or host is checked again every time, and
// only from their second sighting in a row.
type lineMemo = slotcache.Cache[lineEntry]

const lineSlots = 1024

type lineEntry struct {
	rawPath, rawHost string
	opts             reqpath.Options
	path, host       string
}

func newLineMemo() *lineMemo { return slotcache.New[lineEntry](lineSlots) }

// lineSlot is the slot of a path and host, and the hash that chose it.
func lineSlot(m *lineMemo, rawPath, rawHost string) (*atomic.Pointer[lineEntry], uint64) {
	return m.Slot(rawPath, uint64(len(rawHost)))
}

// normalize returns the normalized path (reqpath.NormalizeWith, without
// its query) and host (Host) of a request, or the first error of the
// two, path first.
func normalizeLine(m *lineMemo, rawPath, rawHost string, o reqpath.Options) (path, host string, err error) {
	slot, h := lineSlot(m, rawPath, rawHost)
	if e := slot.Load(); e != nil && e.rawPath == rawPath && e.rawHost == rawHost && e.opts == o {
		return e.path, e.host, nil
	}
	if path, _, err = reqpath.NormalizeWith(rawPath, o); err != nil {
		return "", "", err
	}
	if host, err = Host(rawHost); err != nil {
		return "", "", wrap(ReasonBadHost, err)
	}
	// Paths seen once (a stream of /tickets/<id>) are not stored.
	if m.SeenTwice(h) {
		slot.Store(newLineEntry(rawPath, rawHost, o, path, host))
	}
	return path, host, nil
}

// newLineEntry returns an entry holding copies of its strings (it
// outlives the request), in one allocation.
func newLineEntry(rawPath, rawHost string, o reqpath.Options, path, host string) *lineEntry {
	var b strings.Builder
	b.Grow(len(rawPath) + len(rawHost) + len(path) + len(host))
	b.WriteString(rawPath)
	b.WriteString(rawHost)
	b.WriteString(path)
	b.WriteString(host)
	all := b.String()
	e := &lineEntry{opts: o}
	e.rawPath, all = all[:len(rawPath)], all[len(rawPath):]
	e.rawHost, all = all[:len(rawHost)], all[len(rawHost):]
	e.path, e.host = all[:len(path)], all[len(path):]
	return e
}
