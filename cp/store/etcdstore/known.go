package etcdstore

import "sync"

// known holds, for the keys that a committed transaction of this backend
// both read and wrote (read-modify-write: counters, such as the audit
// trail's next sequence number), the value written and the revision of
// the commit (the key's mod revision from then on). A first attempt takes
// them as its reads; the commit compares their mod revisions, so a value
// another instance changed since fails the commit and is forgotten.
type known struct {
	mu sync.Mutex
	m  map[string]knownValue
}

type knownValue struct {
	val []byte
	rev int64
}

// maxKnown bounds the keys held; past it the map starts again empty.
const maxKnown = 1024

// get returns a copy of the value of k and its mod revision.
func (kn *known) get(k string) ([]byte, int64, bool) {
	kn.mu.Lock()
	defer kn.mu.Unlock()
	kv, ok := kn.m[k]
	if !ok {
		return nil, 0, false
	}
	return append([]byte{}, kv.val...), kv.rev, true
}

// committed notes the keys t read and wrote, committed at rev.
func (kn *known) committed(t *tx, rev int64) {
	kn.mu.Lock()
	defer kn.mu.Unlock()
	for k := range t.reads {
		w, wrote := t.writes[k]
		switch {
		case !wrote:
		case w == nil:
			delete(kn.m, k)
		default:
			if kn.m == nil || len(kn.m) >= maxKnown {
				kn.m = make(map[string]knownValue)
			}
			kn.m[k] = knownValue{val: *w, rev: rev}
		}
	}
}

// forget drops the keys of a transaction whose comparisons failed.
func (kn *known) forget(reads map[string]int64) {
	kn.mu.Lock()
	defer kn.mu.Unlock()
	for k := range reads {
		delete(kn.m, k)
	}
}
