package plane

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/xds/mandatev1"
	"github.com/mandate-dev/mandate/xds/resource"
)

// PutApproval validates and stores an approval.
func (p *Plane) PutApproval(ctx context.Context, a *mandatev1.Approval, actor string) (string, error) {
	if err := resource.ValidateApproval(a); err != nil {
		err = &InvalidError{Err: err}
		p.countWrite(mandatev1.ApprovalTypeURL, err)
		return "", err
	}
	a = proto.Clone(a).(*mandatev1.Approval)
	p.lockWrite()
	defer p.unlockWrite()
	if old, ok := p.res[mandatev1.ApprovalTypeURL][a.GetName()]; ok && proto.Equal(old, a) {
		return p.xds.Versions()[mandatev1.ApprovalTypeURL], nil
	}
	return p.commit(ctx, write{typeURL: mandatev1.ApprovalTypeURL, put: []resource.Named{a},
		audit: []store.AuditEntry{p.audit(actor, "approval.put", "approval/"+a.GetName(),
			fmt.Sprintf("subject %s until %s", a.GetSubject(), a.GetExpires().AsTime().UTC().Format(time.RFC3339)))}})
}

// DeleteApproval removes an approval.
func (p *Plane) DeleteApproval(ctx context.Context, name, actor string) (string, error) {
	p.lockWrite()
	defer p.unlockWrite()
	if _, ok := p.res[mandatev1.ApprovalTypeURL][name]; !ok {
		return "", fmt.Errorf("approval %q: %w", name, ErrNotFound)
	}
	return p.commit(ctx, write{typeURL: mandatev1.ApprovalTypeURL, del: []string{name},
		audit: []store.AuditEntry{p.audit(actor, "approval.delete", "approval/"+name, "")}})
}

// Approvals returns the stored approvals sorted by name.
func (p *Plane) Approvals() []*mandatev1.Approval {
	p.mu.Lock()
	defer p.mu.Unlock()
	return sortedClones[*mandatev1.Approval](p.res[mandatev1.ApprovalTypeURL])
}

// SetVerificationKeys makes keys the whole set of verification keys: the
// keys added, changed and removed are one store transaction (one audit
// entry per key) and one new version, so a replica gets a new key and
// loses its predecessor in the same update.
func (p *Plane) SetVerificationKeys(ctx context.Context, keys []*mandatev1.VerificationKey, actor string) (string, error) {
	next := make(map[string]*mandatev1.VerificationKey, len(keys))
	for _, k := range keys {
		if err := resource.ValidateKey(k); err != nil {
			err = &InvalidError{Err: err}
			p.countWrite(mandatev1.VerificationKeyTypeURL, err)
			return "", err
		}
		if _, dup := next[k.GetName()]; dup {
			err := invalid("verification key %q given twice", k.GetName())
			p.countWrite(mandatev1.VerificationKeyTypeURL, err)
			return "", err
		}
		next[k.GetName()] = proto.Clone(k).(*mandatev1.VerificationKey)
	}
	p.lockWrite()
	defer p.unlockWrite()
	cur := p.res[mandatev1.VerificationKeyTypeURL]
	w := write{typeURL: mandatev1.VerificationKeyTypeURL}
	for _, name := range slices.Sorted(maps.Keys(next)) {
		if old, ok := cur[name]; ok && proto.Equal(old, next[name]) {
			continue
		}
		w.put = append(w.put, next[name])
		w.audit = append(w.audit, p.audit(actor, "key.put", "verification_key/"+name, ""))
	}
	for _, name := range slices.Sorted(maps.Keys(cur)) {
		if _, keep := next[name]; !keep {
			w.del = append(w.del, name)
			w.audit = append(w.audit, p.audit(actor, "key.delete", "verification_key/"+name, ""))
		}
	}
	if len(w.put) == 0 && len(w.del) == 0 {
		return p.xds.Versions()[mandatev1.VerificationKeyTypeURL], nil
	}
	return p.commit(ctx, w)
}

// VerificationKeys returns the stored verification keys sorted by name.
func (p *Plane) VerificationKeys() []*mandatev1.VerificationKey {
	p.mu.Lock()
	defer p.mu.Unlock()
	return sortedClones[*mandatev1.VerificationKey](p.res[mandatev1.VerificationKeyTypeURL])
}
