package mcp

import (
	"hash/crc32"
	"hash/maphash"
	"math/bits"
	"strings"
	"sync/atomic"
	"unsafe"
)

// Memo remembers the parses of recent request bodies, so a body sent
// again costs a byte-for-byte compare instead of a strict parse. MCP
// clients number their requests, so the same call comes back with
// another id: an entry holds the body around the id's value (the exact
// bytes before and after it) and matches a body that is those bytes
// around another id of a plain form (an integer, or a short string of
// printable ASCII without quote or backslash). Such an id is one JSON
// token whatever surrounds it, so the scanner reads the rest of the body
// exactly as it read the remembered one: same members, same duplicates,
// same depth, same UTF-8. Nothing is decided on a hash: a hash only
// chooses the slot to compare with and when a body is worth
// remembering.
//
// Only bodies that parsed are remembered (a refused body is parsed again
// each time), only once seen repeatedly (see Memo.glanceAt; a stream of distinct
// bodies pays a hash, not a copy), and only those of at most
// MaxMemoBody bytes: the memo holds at most memoSlots × MaxMemoBody
// bytes of bodies. A Memo is safe for concurrent use.
type Memo struct {
	lim  Limits
	seed maphash.Seed
	// slots are direct mapped by the hash of a body's last memoTail
	// bytes; eviction is by collision.
	slots [memoSlots]atomic.Pointer[memoEntry]
	// glance and seen hold, per slot, fingerprints of the last body
	// parsed there that was not remembered: glance a cheap one of every
	// body (Memo.glanceAt), seen a full one (Memo.fingerprint), computed
	// only for a body whose glance equals the previous body's. A body
	// is remembered when its full fingerprint equals seen: from its third
	// sighting in a row, or its second when seen still holds it. A
	// stream of distinct bodies that differ near their id or end so pays
	// no fingerprint of the whole body.
	glance [memoSlots]atomic.Uint64
	seen   [memoSlots]atomic.Uint64
}

// Sizes of a Memo.
const (
	// MaxMemoBody is the largest body a Memo remembers.
	MaxMemoBody = 16 << 10
	memoSlots   = 256
	// memoTail bytes at a body's end choose its slot; a body whose id
	// is closer to its end is not remembered (another id would choose
	// another slot).
	memoTail = 32
	// maxMemoID bounds the length of an id a remembered body is matched
	// with.
	maxMemoID = 66
)

// memoEntry is a remembered body: pre and post are the bytes before and
// after its id's value (substrings of one copy), req its parse without
// the id. Immutable once stored.
type memoEntry struct {
	pre, post string
	req       Request // its shared is the entry's own
	shared    Shared
}

// NewMemo returns an empty Memo parsing with lim.
func NewMemo(lim Limits) *Memo {
	return &Memo{lim: lim.withDefaults(), seed: maphash.MakeSeed()}
}

// Parse returns what Parse(body, lim) returns, for the lim of NewMemo.
// A nil Memo parses every body with the default limits.
func (m *Memo) Parse(body string) (Request, error) {
	if m == nil {
		return Parse(body, Limits{})
	}
	if len(body) > MaxMemoBody || len(body) > m.lim.MaxBytes || len(body) < memoTail {
		return Parse(body, m.lim)
	}
	slot := maphash.String(m.seed, body[len(body)-memoTail:]) % memoSlots
	if e := m.slots[slot].Load(); e != nil {
		if id, ok := e.match(body); ok {
			r := e.req
			r.ID = id
			return r, nil
		}
	}
	r, idAt, err := parse(body, m.lim)
	if err != nil || !memoable(body, r.ID, idAt) {
		return r, err
	}
	pre, post := body[:idAt], body[idAt+len(r.ID):]
	if g := m.glanceAt(pre, post); m.glance[slot].Swap(g) != g {
		return r, nil // unlike the last body here
	}
	if fp := m.fingerprint(pre, post); m.seen[slot].Swap(fp) != fp {
		return r, nil // first full sighting
	}
	own := strings.Clone(body)
	mr, _, err := parse(own, m.lim)
	if err != nil || mr.ID != r.ID {
		return r, nil // cannot happen: the same bytes parse the same
	}
	mr.ID = ""
	e := &memoEntry{pre: own[:idAt], post: own[idAt+len(r.ID):], req: mr}
	e.req.shared = &e.shared
	m.slots[slot].Store(e)
	return r, nil
}

// memoable reports whether a parsed body can be remembered: its id
// (at idAt) is of a plain form, followed by a separator, and at least
// memoTail bytes from the end.
func memoable(body, id string, idAt int) bool {
	end := idAt + len(id)
	if !plainID(id) || len(body)-end < memoTail {
		return false
	}
	switch body[end] {
	case ',', '}', ' ', '\t', '\n', '\r':
		return true
	}
	return false
}

// match returns the id of body when it is e's body with another plain
// id.
func (e *memoEntry) match(body string) (string, bool) {
	n := len(body) - len(e.pre) - len(e.post)
	if n < 1 || n > maxMemoID || body[:len(e.pre)] != e.pre || body[len(body)-len(e.post):] != e.post {
		return "", false
	}
	id := body[len(e.pre) : len(e.pre)+n]
	return id, plainID(id)
}

// plainID reports whether id is a JSON integer (no leading zero, at most
// 20 bytes: what Parse accepts as an integer id) or a JSON string of at
// most 64 printable ASCII characters other than quote and backslash.
// Either is one complete token that no following byte can extend.
func plainID(id string) bool {
	if len(id) == 0 || len(id) > maxMemoID {
		return false
	}
	if id[0] == '"' {
		if len(id) < 2 || id[len(id)-1] != '"' {
			return false
		}
		for i := 1; i < len(id)-1; i++ {
			if c := id[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
				return false
			}
		}
		return true
	}
	digits := id
	if digits[0] == '-' {
		digits = digits[1:]
	}
	if len(id) > 20 || digits == "" || digits[0] == '0' && len(digits) > 1 {
		return false
	}
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			return false
		}
	}
	return true
}

// fingerprint is a hash of a body around its id, for admission only.
// CRC-32C (in hardware) costs a fraction of maphash over a few KiB; an
// attacker who matches fingerprints only gets a body remembered, as
// sending it twice would.
func (m *Memo) fingerprint(pre, post string) uint64 {
	return uint64(len(pre))<<32 | uint64(crc32.Update(crc32.Update(0, castagnoli, readOnly(pre)), castagnoli, readOnly(post)))
}

// glanceAt is a cheap fingerprint of a body around its id, for admission
// only: the lengths of both parts, the 64 bytes before the id, the first
// 256 bytes after it and the last 64, hashed with the memo's seed (AES
// based where the CPU has it: a few times faster than CRC-32C on these
// few hundred bytes). Calls in a stream of distinct ones usually differ
// there (method, tool, the first and short arguments, lengths); bodies
// that differ elsewhere only pay the full fingerprint as well.
func (m *Memo) glanceAt(pre, post string) uint64 {
	const w, head = 64, 256
	h := maphash.String(m.seed, pre[max(0, len(pre)-w):])
	h ^= bits.RotateLeft64(maphash.String(m.seed, post[:min(head, len(post))]), 21)
	h ^= bits.RotateLeft64(maphash.String(m.seed, post[max(0, len(post)-w):]), 42)
	return h ^ uint64(len(pre))<<32 ^ uint64(len(post))
}

// readOnly is s's bytes, for a function that only reads them (a
// conversion would copy them).
func readOnly(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

var castagnoli = crc32.MakeTable(crc32.Castagnoli)
