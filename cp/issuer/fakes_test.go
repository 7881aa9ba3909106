package issuer

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/authz/mandate"
	"github.com/mandate-dev/mandate/authz/revocation"
	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Date(2030, 1, 2, 3, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// fakePlane is the Plane contract over a real store, without xDS.
type fakePlane struct {
	st *store.DB

	mu      sync.Mutex
	keys    []*mandatev1.VerificationKey
	keySets int
	revs    []revocation.Record
}

func newFakePlane(t *testing.T, now func() time.Time) *fakePlane {
	t.Helper()
	st := store.NewMemory(store.WithClock(now))
	t.Cleanup(func() { st.Close() })
	return &fakePlane{st: st}
}

func (p *fakePlane) SetVerificationKeys(_ context.Context, keys []*mandatev1.VerificationKey, _ string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.keys = nil
	for _, k := range keys {
		p.keys = append(p.keys, proto.Clone(k).(*mandatev1.VerificationKey))
	}
	p.keySets++
	return "1", nil
}

func (p *fakePlane) Revoke(ctx context.Context, r revocation.Record, actor string) (string, error) {
	if err := r.Validate(); err != nil {
		return "", err
	}
	r.CreatedBy = actor
	p.mu.Lock()
	p.revs = append(p.revs, r)
	p.mu.Unlock()
	return "7", nil
}

func (p *fakePlane) Revocations(bool) ([]*mandatev1.Revocation, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*mandatev1.Revocation
	for i, r := range p.revs {
		name := r.ID
		if name == "" {
			name = fmt.Sprint("r-", i)
		}
		out = append(out, &mandatev1.Revocation{
			Name: name, Kind: r.Kind.String(), Value: r.Value, Intents: r.Intents,
			Expires: timestamppb.New(r.Expires), Reason: r.Reason, CreatedAt: timestamppb.New(r.CreatedAt), CreatedBy: r.CreatedBy,
		})
	}
	return out, "7"
}

func (p *fakePlane) Audit(ctx context.Context, actor, action, object, detail string) error {
	return p.st.AppendAudit(ctx, store.AuditEntry{Actor: actor, Action: action, Object: object, Detail: detail})
}

func (p *fakePlane) published() []mandate.Key {
	p.mu.Lock()
	defer p.mu.Unlock()
	return keysOf(p.keys)
}

func keysOf(vks []*mandatev1.VerificationKey) []mandate.Key {
	var out []mandate.Key
	for _, k := range vks {
		out = append(out, mandate.Key{ID: k.GetName(), Public: slices.Clone(k.GetPublicKey()),
			NotBefore: k.GetNotBefore().AsTime(), NotAfter: k.GetNotAfter().AsTime()})
	}
	return out
}
