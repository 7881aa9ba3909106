package plane

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/authz/revocation"
	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/xds/mandatev1"
	"github.com/mandate-dev/mandate/xds/resource"
)

// NewRecordID returns a fresh random revocation record id ("r-" and 16
// hex digits).
func NewRecordID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "r-" + hex.EncodeToString(b[:])
}

// Revoke validates r and stores it as a new record. ID defaults to a fresh
// random id, CreatedAt to now; CreatedBy is always actor. Records are
// never deleted: they expire. It returns the Revocation version.
func (p *Plane) Revoke(ctx context.Context, r revocation.Record, actor string) (string, error) {
	_, v, err := p.RevokeRecord(ctx, r, actor)
	return v, err
}

// RevokeRecord is Revoke returning the stored record too.
func (p *Plane) RevokeRecord(ctx context.Context, r revocation.Record, actor string) (*mandatev1.Revocation, string, error) {
	recs, v, err := p.RevokeMany(ctx, []revocation.Record{r}, actor)
	if err != nil {
		return nil, v, err
	}
	return recs[0], v, nil
}

// RevokeMany validates every record and stores them all as new records in
// one store transaction (one audit entry per record, so the trail says
// who revoked what), published as one new Revocation version. Either all
// are stored or none: one invalid record fails the batch with an
// *InvalidError naming its index. Defaults are Revoke's. It returns the
// stored records in input order and the Revocation version.
func (p *Plane) RevokeMany(ctx context.Context, rs []revocation.Record, actor string) ([]*mandatev1.Revocation, string, error) {
	if len(rs) == 0 || len(rs) > MaxRevokeBatch {
		err := invalid("a batch holds 1 to %d revocations, not %d", MaxRevokeBatch, len(rs))
		p.countWrite(mandatev1.RevocationTypeURL, err)
		return nil, "", err
	}
	now := p.now()
	recs := make([]*mandatev1.Revocation, len(rs))
	audit := make([]store.AuditEntry, len(rs))
	ids := make(map[string]struct{}, len(rs))
	for i, r := range rs {
		if r.ID == "" {
			r.ID = NewRecordID()
		}
		r.CreatedBy = actor
		if r.CreatedAt.IsZero() {
			r.CreatedAt = now
		}
		rec, err := p.checkRecord(r, now)
		if err == nil {
			if _, dup := ids[r.ID]; dup {
				err = invalid("revocation %s given twice", r.ID)
			}
		}
		if err != nil {
			if len(rs) > 1 {
				err = invalid("revocation %d of %d: %w", i+1, len(rs), err)
			}
			p.countWrite(mandatev1.RevocationTypeURL, err)
			return nil, "", err
		}
		ids[r.ID] = struct{}{}
		recs[i] = rec
		audit[i] = p.audit(actor, recordAction(r), "revocation/"+r.ID, recordDetail(r))
	}
	p.lockWrite()
	defer p.unlockWrite()
	held := p.res[mandatev1.RevocationTypeURL]
	if n := len(held) + len(recs); n > MaxRevocations {
		err := invalid("%d revocation records would exceed the limit of %d", n, MaxRevocations)
		p.countWrite(mandatev1.RevocationTypeURL, err)
		return nil, "", err
	}
	put := make([]resource.Named, len(recs))
	for i, rec := range recs {
		if _, dup := held[rec.GetName()]; dup {
			err := invalid("revocation %s already exists (records are never replaced)", rec.GetName())
			p.countWrite(mandatev1.RevocationTypeURL, err)
			return nil, "", err
		}
		put[i] = rec
	}
	v, err := p.commit(ctx, write{typeURL: mandatev1.RevocationTypeURL, put: put, audit: audit, repeatable: true})
	if err != nil {
		return nil, "", err
	}
	if len(recs) == 1 {
		r := rs[0]
		p.log.Info("revocation recorded", "actor", actor, "id", recs[0].GetName(), "kind", r.Kind.String(), "value", r.Value,
			"intents", r.Intents, "expires", r.Expires, "version", v)
	} else {
		p.log.Info("revocations recorded", "actor", actor, "records", len(recs), "version", v)
	}
	out := make([]*mandatev1.Revocation, len(recs))
	for i, rec := range recs {
		out[i] = proto.Clone(rec).(*mandatev1.Revocation)
	}
	return out, v, nil
}

func recordAction(r revocation.Record) string {
	if len(r.Intents) > 0 {
		return "downgrade.create"
	}
	return "revocation.create"
}

func recordDetail(r revocation.Record) string {
	detail := fmt.Sprintf("%s %s until %s", r.Kind, r.Value, r.Expires.UTC().Format(time.RFC3339))
	if len(r.Intents) > 0 {
		detail += " intents " + strings.Join(r.Intents, ",")
	}
	if r.Reason != "" {
		detail += ": " + r.Reason
	}
	return detail
}

func (p *Plane) checkRecord(r revocation.Record, now time.Time) (*mandatev1.Revocation, error) {
	if err := r.Validate(); err != nil {
		return nil, &InvalidError{Err: err}
	}
	switch {
	case len(r.Value) > maxValueLen:
		return nil, invalid("revocation value of %d bytes exceeds %d", len(r.Value), maxValueLen)
	case len(r.Reason) > maxReasonLen:
		return nil, invalid("reason of %d bytes exceeds %d", len(r.Reason), maxReasonLen)
	case len(r.Intents) > maxIntents:
		return nil, invalid("%d intents exceed %d", len(r.Intents), maxIntents)
	case !r.Expires.After(now):
		return nil, invalid("revocation %s: expiry %s is not in the future", r.ID, r.Expires.UTC().Format(time.RFC3339))
	case len(r.ID) > 128:
		return nil, invalid("revocation id too long")
	}
	rec := &mandatev1.Revocation{
		Name: r.ID, Kind: r.Kind.String(), Value: r.Value, Intents: slices.Clone(r.Intents),
		Expires: timestamppb.New(r.Expires), Reason: r.Reason,
		CreatedAt: timestamppb.New(r.CreatedAt), CreatedBy: r.CreatedBy,
	}
	// What the cp stores must be what a replica accepts.
	if _, err := resource.RevocationRecord(rec); err != nil {
		return nil, &InvalidError{Err: err}
	}
	return rec, nil
}

// Revocations returns the records sorted by creation time; expired ones
// only when includeExpired.
func (p *Plane) Revocations(includeExpired bool) ([]*mandatev1.Revocation, string) {
	now := p.now()
	p.mu.Lock()
	all := sortedClones[*mandatev1.Revocation](p.res[mandatev1.RevocationTypeURL])
	v := p.xds.Versions()[mandatev1.RevocationTypeURL]
	p.mu.Unlock()
	out := all[:0]
	for _, r := range all {
		if includeExpired || r.GetExpires().AsTime().After(now) {
			out = append(out, r)
		}
	}
	slices.SortStableFunc(out, func(a, b *mandatev1.Revocation) int {
		return a.GetCreatedAt().AsTime().Compare(b.GetCreatedAt().AsTime())
	})
	return out, v
}
