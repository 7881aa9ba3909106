package plane

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// Defaults of the revocation garbage collector.
const (
	DefaultRevocationRetention = time.Hour
	DefaultSweepInterval       = time.Minute
	// GCActor is the actor of the collector's audit entries.
	GCActor = "system:revocation-gc"
)

// WithRevocationRetention sets how long a record is kept after it expired
// (default one hour) before SweepRevocations removes it; 0 keeps expired
// records forever. The retention also covers replicas whose clock runs
// behind the control plane's.
func WithRevocationRetention(d time.Duration) Option {
	return func(p *Plane) error {
		if d < 0 {
			return errors.New("plane: negative revocation retention")
		}
		p.retention = d
		return nil
	}
}

// Defaults of the audit trail's retention.
const (
	DefaultAuditMaxAge     = 90 * 24 * time.Hour
	DefaultAuditMaxEntries = 1_000_000
)

// WithAuditRetention bounds the audit trail by age and count; RunSweeper
// enforces it every sweep interval (zero fields: no bound).
func WithAuditRetention(r store.AuditRetention) Option {
	return func(p *Plane) error {
		if r.MaxAge < 0 {
			return errors.New("plane: negative audit retention")
		}
		p.auditKeep = r
		return nil
	}
}

// SweepAudit removes the audit entries the retention no longer keeps
// (oldest first) and returns how many.
func (p *Plane) SweepAudit(ctx context.Context) (int, error) {
	n, err := p.st.PruneAudit(ctx, p.auditKeep)
	if err != nil {
		return n, fmt.Errorf("plane: audit retention: %w", err)
	}
	if n > 0 {
		p.log.Info("audit entries past retention removed", "entries", n,
			"max_age", p.auditKeep.MaxAge, "max_entries", p.auditKeep.MaxEntries)
	}
	return n, nil
}

// WithSweepInterval sets how often RunSweeper sweeps, and the shortest
// time between two sweeps (default one minute).
func WithSweepInterval(d time.Duration) Option {
	return func(p *Plane) error {
		if d <= 0 {
			return errors.New("plane: sweep interval must be positive")
		}
		p.sweepEvery = d
		return nil
	}
}

// SweepResult says what one sweep did.
type SweepResult struct {
	// Skipped is true when the previous sweep is less than the sweep
	// interval ago: nothing was looked at.
	Skipped bool
	// Removed is the number of records deleted.
	Removed int
	// Version is the Revocation version after the sweep.
	Version string
}

// SweepRevocations deletes, from the store and from xDS, every record that
// expired more than the retention ago, in one transaction with one audit
// entry (actor GCActor) and one new Revocation version. Deleting an
// expired record lifts nothing: it had already stopped applying. Step-up
// approvals that expired more than the retention ago go the same way (an
// expired approval allows nothing), in their own transaction. It runs at
// most once per sweep interval (by the plane's clock); a call sooner than
// that returns Skipped.
func (p *Plane) SweepRevocations(ctx context.Context) (SweepResult, error) {
	p.lockWrite()
	defer p.unlockWrite()
	now := p.now()
	version := func() string { return p.xds.Versions()[mandatev1.RevocationTypeURL] }
	if p.retention == 0 || (!p.lastSweep.IsZero() && now.Before(p.lastSweep.Add(p.sweepEvery))) {
		return SweepResult{Skipped: true, Version: version()}, nil
	}
	p.lastSweep = now
	cutoff := now.Add(-p.retention)
	if n, v, err := p.sweepExpiredLocked(ctx, mandatev1.ApprovalTypeURL, cutoff, "approval.gc", "approvals"); err != nil {
		return SweepResult{}, err
	} else if n > 0 {
		p.log.Info("expired approvals removed", "approvals", n, "cutoff", cutoff, "version", v)
	}
	n, v, err := p.sweepExpiredLocked(ctx, mandatev1.RevocationTypeURL, cutoff, "revocation.gc", "revocations")
	if err != nil {
		return SweepResult{}, err
	}
	if n == 0 {
		return SweepResult{Version: version()}, nil
	}
	p.log.Info("expired revocations removed", "records", n, "cutoff", cutoff, "version", v)
	return SweepResult{Removed: n, Version: v}, nil
}

// sweepExpiredLocked deletes the resources of typeURL (revocations,
// approvals: kinds with an expiry) that expired before cutoff, in one
// commit with one audit entry, and returns how many and the new version.
func (p *Plane) sweepExpiredLocked(ctx context.Context, typeURL string, cutoff time.Time, action, object string) (int, string, error) {
	var names []string
	for name, r := range p.res[typeURL] {
		if e, ok := r.(interface{ GetExpires() *timestamppb.Timestamp }); ok && e.GetExpires().AsTime().Before(cutoff) {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return 0, "", nil
	}
	slices.Sort(names)
	detail := fmt.Sprintf("removed %d records expired before %s (retention %s)",
		len(names), cutoff.UTC().Format(time.RFC3339), p.retention)
	v, err := p.commit(ctx, write{typeURL: typeURL, del: names,
		audit: []store.AuditEntry{p.audit(GCActor, action, object, detail)}})
	if err != nil {
		return 0, "", fmt.Errorf("plane: %s: %w", action, err)
	}
	return len(names), v, nil
}

// RunSweeper calls SweepRevocations and SweepAudit every sweep interval
// until ctx ends. Errors are logged; the next tick tries again.
func (p *Plane) RunSweeper(ctx context.Context) {
	if p.retention == 0 && p.auditKeep == (store.AuditRetention{}) {
		return
	}
	ticks, stop := p.newTicker(p.sweepEvery)
	defer stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticks:
			if _, err := p.SweepRevocations(ctx); err != nil && ctx.Err() == nil {
				p.log.Error("revocation gc failed", "error", err)
			}
			if _, err := p.SweepAudit(ctx); err != nil && ctx.Err() == nil {
				p.log.Error("audit retention failed", "error", err)
			}
		}
	}
}

func realTicker(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTicker(d)
	return t.C, t.Stop
}
