// Package revocation holds the set of revocation and downgrade records a
// replica enforces, and answers whether a request's subject, task or
// mandate chain is revoked.
//
// Records are explicit and carry an expiry: a revocation is lifted only by
// expiring, never by deleting it. A Set is immutable; derive the next one
// with With, which shares what did not change.
package revocation

import (
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"strings"
	"time"

	"github.com/mandate-dev/mandate/policies/pattern"
)

// Kind names what a record revokes.
type Kind uint8

const (
	// KindSubject revokes a SPIFFE ID, or every ID matching a pattern.
	KindSubject Kind = iota + 1
	// KindTask revokes every mandate and declared intent of a task.
	KindTask
	// KindMandate revokes a mandate id and, through the chains that name
	// it, every mandate delegated from it.
	KindMandate
)

// String returns the kind's name as the CLI spells it.
func (k Kind) String() string {
	switch k {
	case KindSubject:
		return "subject"
	case KindTask:
		return "task"
	case KindMandate:
		return "mandate"
	default:
		return fmt.Sprintf("kind(%d)", uint8(k))
	}
}

// ParseKind is the inverse of Kind.String.
func ParseKind(s string) (Kind, error) {
	switch s {
	case "subject":
		return KindSubject, nil
	case "task":
		return KindTask, nil
	case "mandate":
		return KindMandate, nil
	}
	return 0, fmt.Errorf("revocation: unknown kind %q", s)
}

// Record is one revocation or downgrade.
type Record struct {
	// ID identifies the record itself.
	ID    string
	Kind  Kind
	Value string
	// Intents, when not empty, makes the record a downgrade: requests
	// whose intent is in the list still pass, every other is refused.
	Intents []string
	// Expires is when the record stops applying. Required.
	Expires time.Time
	// Reason is free text for operators; never sent to clients.
	Reason    string
	CreatedAt time.Time
	CreatedBy string
}

// Validate checks a record's fields. A subject that holds no '*' is a
// literal SPIFFE ID and needs no pattern compile.
func (r *Record) Validate() error {
	_, _, err := r.check()
	return err
}

// check validates r and compiles its subject pattern (a literal subject
// yields the zero Pattern and literal true).
func (r *Record) check() (pat pattern.Pattern, literal bool, err error) {
	if r.ID == "" {
		return pat, false, errors.New("revocation: record has no id")
	}
	if r.Value == "" {
		return pat, false, fmt.Errorf("revocation: record %s: empty value", r.ID)
	}
	if r.Expires.IsZero() {
		return pat, false, fmt.Errorf("revocation: record %s: no expiry", r.ID)
	}
	switch r.Kind {
	case KindSubject:
		if !strings.HasPrefix(r.Value, "spiffe://") {
			return pat, false, fmt.Errorf("revocation: record %s: subject %q is not a SPIFFE ID or pattern", r.ID, r.Value)
		}
		if !strings.Contains(r.Value, "*") {
			// What pattern.Compile refuses in a pattern without '*'.
			if strings.ContainsAny(r.Value, "?#[]") {
				return pat, false, fmt.Errorf("revocation: record %s: %w %q: '?', '#', '[' and ']' are not allowed",
					r.ID, pattern.ErrInvalid, r.Value)
			}
			literal = true
			break
		}
		if pat, err = pattern.Compile(r.Value); err != nil {
			return pat, false, fmt.Errorf("revocation: record %s: %w", r.ID, err)
		}
	case KindTask, KindMandate:
	default:
		return pat, false, fmt.Errorf("revocation: record %s: unknown kind %d", r.ID, r.Kind)
	}
	for _, in := range r.Intents {
		if in == "" {
			return pat, false, fmt.Errorf("revocation: record %s: empty intent in downgrade", r.ID)
		}
	}
	return pat, literal, nil
}

// Query is what a decision asks of the set.
type Query struct {
	Subject string
	Task    string
	Intent  string
	// Chain holds the mandate ids from the root of the delegation chain
	// to the presented mandate (inclusive). Empty without a mandate.
	Chain []string
	// Holders are the SPIFFE IDs that held the mandate along its
	// delegation chain (root first). A revoked holder revokes every
	// mandate delegated from it: a revoked parent holder is a revoked
	// child. Empty without a mandate.
	Holders []string
}

// Verdict is the answer to a Query.
type Verdict struct {
	// Revoked is true when the request must be refused.
	Revoked bool
	// Downgraded is true when the refusal (or the pass) came from a
	// downgrade record rather than a full revocation.
	Downgraded bool
	// Record is the id of the record that decided; empty when none did.
	Record string
	Kind   Kind
}

type compiled struct {
	rec Record
	// pat is the compiled subject pattern of a subject holding '*'; nil
	// for every other record (most of them: a literal subject, a task, a
	// mandate), which so keeps its size down.
	pat     *pattern.Pattern
	intents map[string]struct{}
}

func compile(r Record) (compiled, error) {
	pat, literal, err := r.check()
	if err != nil {
		return compiled{}, err
	}
	c := compiled{rec: r}
	if r.Kind == KindSubject && !literal {
		c.pat = &pat
	}
	if len(r.Intents) > 0 {
		c.intents = make(map[string]struct{}, len(r.Intents))
		for _, in := range r.Intents {
			c.intents[in] = struct{}{}
		}
	}
	return c, nil
}

// bucket is the records of one key of a value index, sorted by ID. One
// record, the common case, is held inline: no array of its own.
type bucket struct {
	one  [1]*compiled
	many []*compiled // when more than one
}

func makeBucket(cs []*compiled) bucket {
	if len(cs) == 1 {
		return bucket{one: [1]*compiled{cs[0]}}
	}
	return bucket{many: cs}
}

// records returns the bucket's records (l may be nil: none).
func records(l *tleaf[bucket]) []*compiled {
	if l == nil {
		return nil
	}
	if l.val.many != nil {
		return l.val.many
	}
	return l.val.one[:]
}

// Set is an immutable, indexed set of records, keyed by record ID. Sets
// made by With share every part they did not change with the Set they
// came from, so they are cheap to derive and safe to read concurrently.
type Set struct {
	seed      maphash.Seed
	byID      trie[compiled] // ID -> the one record
	bySubject trie[bucket]   // literal SPIFFE ID -> records
	byTask    trie[bucket]
	byMandate trie[bucket]
	// patterns are the subject records holding '*', sorted by ID.
	patterns []*compiled
}

// RecordError is the error With and NewSet return for an invalid record.
type RecordError struct {
	ID  string
	Err error
}

func (e *RecordError) Error() string { return e.Err.Error() }
func (e *RecordError) Unwrap() error { return e.Err }

// Empty is a Set with no records.
func Empty() *Set { return &Set{seed: maphash.MakeSeed()} }

// NewSet validates and indexes records. Record IDs must be unique.
func NewSet(records []Record) (*Set, error) {
	return Empty().With(records, nil)
}

// With returns a Set holding s's records less those whose ID is in del,
// plus put: a put record replaces the record of the same ID. Every record
// in put is validated; on error s is unchanged (it always is) and no Set
// is returned. An ID may not be both put and deleted, nor put twice;
// deleting an ID s does not hold is not an error. The cost is in the
// number of records changed, not the number held.
func (s *Set) With(put []Record, del []string) (*Set, error) {
	e := s.Edit()
	var gone map[string]struct{}
	if len(del) > 0 {
		gone = make(map[string]struct{}, len(del))
	}
	for _, id := range del {
		gone[id] = struct{}{}
		e.Delete(id)
	}
	var seen map[string]struct{}
	if len(put) > 1 {
		seen = make(map[string]struct{}, len(put))
	}
	for i := range put {
		id := put[i].ID
		if _, dup := gone[id]; dup {
			return nil, fmt.Errorf("revocation: record %s both put and deleted", id)
		}
		if seen != nil {
			if _, dup := seen[id]; dup {
				return nil, fmt.Errorf("revocation: record %s given twice", id)
			}
			seen[id] = struct{}{}
		}
		if err := e.Put(put[i]); err != nil {
			return nil, err
		}
	}
	return e.Set(), nil
}

// Editor derives a Set from another one change at a time, without
// gathering the changes first: Put and Delete apply in the order called
// (a Put replaces the record of its ID, even one put earlier in the same
// edit). The Set it came from never changes; an Editor whose Put failed
// may be dropped, or used on. An Editor is not safe for concurrent use.
type Editor struct {
	next           *Set
	ed             *edit
	patternsShared bool
}

// Edit starts deriving a Set from s.
func (s *Set) Edit() *Editor {
	return &Editor{ed: &edit{}, patternsShared: true, next: &Set{seed: s.seed, byID: s.byID,
		bySubject: s.bySubject, byTask: s.byTask, byMandate: s.byMandate, patterns: s.patterns}}
}

// Put validates r and adds it, replacing the record of its ID; a record
// that does not validate is a *RecordError and changes nothing.
func (e *Editor) Put(r Record) error {
	c, err := compile(r)
	if err != nil {
		return &RecordError{ID: r.ID, Err: err}
	}
	next, id := e.next, c.rec.ID
	h := maphash.String(next.seed, id)
	if old := next.byID.getH(h, id); old != nil {
		if next.unindex(e.ed, &old.val, e.patternsShared) {
			e.patternsShared = false
		}
	}
	// The record lives in its ID leaf; the other indexes point there.
	l := next.byID.putH(e.ed, h, id, c)
	if next.index(e.ed, &l.val, e.patternsShared) {
		e.patternsShared = false
	}
	return nil
}

// Delete removes the record of id, if held.
func (e *Editor) Delete(id string) {
	next := e.next
	h := maphash.String(next.seed, id)
	old := next.byID.getH(h, id)
	if old == nil {
		return
	}
	next.byID.deleteH(e.ed, h, id)
	if next.unindex(e.ed, &old.val, e.patternsShared) {
		e.patternsShared = false
	}
}

// Set returns the Set the edits made. The Editor may not be used after.
func (e *Editor) Set() *Set {
	s := e.next
	e.next, e.ed = nil, nil
	return s
}

// index files c; it reports whether it copied s.patterns.
func (s *Set) index(ed *edit, c *compiled, patternsShared bool) (copied bool) {
	if c.pat != nil {
		if patternsShared {
			s.patterns = slices.Clone(s.patterns)
		}
		i, _ := slices.BinarySearchFunc(s.patterns, c.rec.ID, byID)
		s.patterns = slices.Insert(s.patterns, i, c)
		return patternsShared
	}
	t := s.indexOf(c.rec.Kind)
	h := maphash.String(s.seed, c.rec.Value)
	old := records(t.getH(h, c.rec.Value))
	if len(old) == 0 {
		t.putH(ed, h, c.rec.Value, bucket{one: [1]*compiled{c}})
		return false
	}
	i, _ := slices.BinarySearchFunc(old, c.rec.ID, byID)
	cs := make([]*compiled, 0, len(old)+1)
	cs = append(append(append(cs, old[:i]...), c), old[i:]...)
	t.putH(ed, h, c.rec.Value, makeBucket(cs))
	return false
}

// unindex removes c; it reports whether it copied s.patterns.
func (s *Set) unindex(ed *edit, c *compiled, patternsShared bool) (copied bool) {
	if c.pat != nil {
		if patternsShared {
			s.patterns = slices.Clone(s.patterns)
		}
		if i, ok := slices.BinarySearchFunc(s.patterns, c.rec.ID, byID); ok {
			s.patterns = slices.Delete(s.patterns, i, i+1)
		}
		return patternsShared
	}
	t := s.indexOf(c.rec.Kind)
	h := maphash.String(s.seed, c.rec.Value)
	old := records(t.getH(h, c.rec.Value))
	i, ok := slices.BinarySearchFunc(old, c.rec.ID, byID)
	if !ok {
		return false
	}
	if len(old) == 1 {
		t.deleteH(ed, h, c.rec.Value)
		return false
	}
	t.putH(ed, h, c.rec.Value, makeBucket(slices.Concat(old[:i], old[i+1:])))
	return false
}

func (s *Set) indexOf(k Kind) *trie[bucket] {
	switch k {
	case KindSubject:
		return &s.bySubject
	case KindTask:
		return &s.byTask
	default:
		return &s.byMandate
	}
}

func byID(c *compiled, id string) int { return strings.Compare(c.rec.ID, id) }

// Len returns the number of records, expired ones included.
func (s *Set) Len() int { return s.byID.n }

// Records returns a copy of the records, sorted by ID.
func (s *Set) Records() []Record {
	out := make([]Record, 0, s.byID.n)
	s.byID.each(func(l *tleaf[compiled]) { out = append(out, l.val.rec) })
	slices.SortFunc(out, func(a, b Record) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Check answers q at time now. A full revocation wins over a downgrade;
// among downgrades every one that applies must allow the intent. Within
// an index, records are visited in ID order, so the record named in the
// verdict does not depend on how the Set was built. Check does not
// allocate.
func (s *Set) Check(now time.Time, q Query) Verdict {
	var down *compiled
	if c := visit(records(s.bySubject.get(s.seed, q.Subject)), now, q.Intent, &down); c != nil {
		return verdict(c)
	}
	for _, c := range s.patterns {
		if c.pat.Match(q.Subject) {
			if hit := visitOne(c, now, q.Intent, &down); hit != nil {
				return verdict(hit)
			}
		}
	}
	for _, h := range q.Holders {
		if h == q.Subject {
			continue
		}
		if c := visit(records(s.bySubject.get(s.seed, h)), now, q.Intent, &down); c != nil {
			return verdict(c)
		}
		for _, c := range s.patterns {
			if c.pat.Match(h) {
				if hit := visitOne(c, now, q.Intent, &down); hit != nil {
					return verdict(hit)
				}
			}
		}
	}
	if q.Task != "" {
		if c := visit(records(s.byTask.get(s.seed, q.Task)), now, q.Intent, &down); c != nil {
			return verdict(c)
		}
	}
	for _, id := range q.Chain {
		if c := visit(records(s.byMandate.get(s.seed, id)), now, q.Intent, &down); c != nil {
			return verdict(c)
		}
	}
	if down != nil {
		return Verdict{Revoked: true, Downgraded: true, Record: down.rec.ID, Kind: down.rec.Kind}
	}
	return Verdict{}
}

// visit returns the first live full revocation in cs, and notes in *down
// the first live downgrade that refuses intent.
func visit(cs []*compiled, now time.Time, intent string, down **compiled) *compiled {
	for _, c := range cs {
		if hit := visitOne(c, now, intent, down); hit != nil {
			return hit
		}
	}
	return nil
}

func visitOne(c *compiled, now time.Time, intent string, down **compiled) *compiled {
	if !now.Before(c.rec.Expires) {
		return nil
	}
	if c.intents == nil {
		return c
	}
	if _, ok := c.intents[intent]; !ok && *down == nil {
		*down = c
	}
	return nil
}

func verdict(c *compiled) Verdict {
	return Verdict{Revoked: true, Record: c.rec.ID, Kind: c.rec.Kind}
}
