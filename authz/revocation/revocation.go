// Package revocation holds the set of revocation and downgrade records a
// replica enforces, and answers whether a request's subject, task or
// mandate chain is revoked.
//
// Records are explicit and carry an expiry: a revocation is lifted only by
// expiring, never by deleting it. A Set is immutable; build a new one for
// every change.
package revocation

import (
	"errors"
	"fmt"
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

// Validate checks a record's fields.
func (r *Record) Validate() error {
	if r.ID == "" {
		return errors.New("revocation: record has no id")
	}
	if r.Value == "" {
		return fmt.Errorf("revocation: record %s: empty value", r.ID)
	}
	if r.Expires.IsZero() {
		return fmt.Errorf("revocation: record %s: no expiry", r.ID)
	}
	switch r.Kind {
	case KindSubject:
		if !strings.HasPrefix(r.Value, "spiffe://") {
			return fmt.Errorf("revocation: record %s: subject %q is not a SPIFFE ID or pattern", r.ID, r.Value)
		}
		if _, err := pattern.Compile(r.Value); err != nil {
			return fmt.Errorf("revocation: record %s: %w", r.ID, err)
		}
	case KindTask, KindMandate:
	default:
		return fmt.Errorf("revocation: record %s: unknown kind %d", r.ID, r.Kind)
	}
	for _, in := range r.Intents {
		if in == "" {
			return fmt.Errorf("revocation: record %s: empty intent in downgrade", r.ID)
		}
	}
	return nil
}

// Query is what a decision asks of the set.
type Query struct {
	Subject string
	Task    string
	Intent  string
	// Chain holds the mandate ids from the root of the delegation chain
	// to the presented mandate (inclusive). Empty without a mandate.
	Chain []string
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
	rec     Record
	pat     pattern.Pattern
	intents map[string]struct{}
}

// Set is an immutable, indexed set of records.
type Set struct {
	bySubject map[string][]*compiled
	patterns  []*compiled
	byTask    map[string][]*compiled
	byMandate map[string][]*compiled
	records   []Record
}

// Empty is a Set with no records.
func Empty() *Set { s, _ := NewSet(nil); return s }

// NewSet validates and indexes records.
func NewSet(records []Record) (*Set, error) {
	s := &Set{
		bySubject: map[string][]*compiled{},
		byTask:    map[string][]*compiled{},
		byMandate: map[string][]*compiled{},
		records:   make([]Record, 0, len(records)),
	}
	for i := range records {
		r := records[i]
		if err := r.Validate(); err != nil {
			return nil, err
		}
		c := &compiled{rec: r}
		if len(r.Intents) > 0 {
			c.intents = make(map[string]struct{}, len(r.Intents))
			for _, in := range r.Intents {
				c.intents[in] = struct{}{}
			}
		}
		switch r.Kind {
		case KindSubject:
			c.pat = pattern.MustCompile(r.Value)
			if c.pat.IsLiteral() {
				s.bySubject[r.Value] = append(s.bySubject[r.Value], c)
			} else {
				s.patterns = append(s.patterns, c)
			}
		case KindTask:
			s.byTask[r.Value] = append(s.byTask[r.Value], c)
		case KindMandate:
			s.byMandate[r.Value] = append(s.byMandate[r.Value], c)
		}
		s.records = append(s.records, r)
	}
	return s, nil
}

// Len returns the number of records, expired ones included.
func (s *Set) Len() int { return len(s.records) }

// Records returns a copy of the records.
func (s *Set) Records() []Record { return append([]Record(nil), s.records...) }

// Check answers q at time now. A full revocation wins over a downgrade;
// among downgrades every one that applies must allow the intent.
func (s *Set) Check(now time.Time, q Query) Verdict {
	var down *compiled
	visit := func(cs []*compiled) *compiled {
		for _, c := range cs {
			if !now.Before(c.rec.Expires) {
				continue
			}
			if c.intents == nil {
				return c
			}
			if _, ok := c.intents[q.Intent]; !ok && down == nil {
				down = c
			}
		}
		return nil
	}
	if c := visit(s.bySubject[q.Subject]); c != nil {
		return verdict(c)
	}
	for _, c := range s.patterns {
		if c.pat.Match(q.Subject) {
			if hit := visit([]*compiled{c}); hit != nil {
				return verdict(hit)
			}
		}
	}
	if q.Task != "" {
		if c := visit(s.byTask[q.Task]); c != nil {
			return verdict(c)
		}
	}
	for _, id := range q.Chain {
		if c := visit(s.byMandate[id]); c != nil {
			return verdict(c)
		}
	}
	if down != nil {
		return Verdict{Revoked: true, Downgraded: true, Record: down.rec.ID, Kind: down.rec.Kind}
	}
	return Verdict{}
}

func verdict(c *compiled) Verdict {
	return Verdict{Revoked: true, Record: c.rec.ID, Kind: c.rec.Kind}
}
