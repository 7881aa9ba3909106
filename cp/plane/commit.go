package plane

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/xds/resource"
)

// write is one change of one resource kind.
type write struct {
	typeURL string
	// put: resources to create or replace, validated by the caller
	// against the state they change; owned by the plane from now on.
	put []resource.Named
	// del: names to remove (each must exist).
	del []string
	// replace: put is the whole new set; every other name goes. It was
	// planned on the type at version base: the commit fails with
	// store.ErrConflict when another commit wrote the type since.
	replace bool
	base    uint64
	// repeatable: writing w twice leaves what writing it once does
	// (records created under names chosen before the first attempt), so
	// a write whose outcome is unknown is written again (maxRepeats
	// attempts); the audit trail then holds its entries once for each
	// attempt that committed.
	repeatable bool
	audit      []store.AuditEntry
}

// Attempts of a repeatable write whose outcome stays unknown, and the
// pause between them.
const (
	maxRepeats    = 3
	repeatBackoff = 200 * time.Millisecond
)

// commit is the one write path of every kind: the store commits w with
// its audit entries in one transaction; the feed then applies it to the
// plane's copy and publishes it over xDS at the store's version, as it
// does every other instance's commits, and commit returns once that is
// done, with the type's version. Callers hold the write lock (lockWrite)
// and have validated w; commit releases mu while it waits.
func (p *Plane) commit(ctx context.Context, w write) (string, error) {
	items := make([]store.Item, len(w.put))
	for i, r := range w.put {
		b, err := resource.Marshal(r)
		if err != nil {
			p.countWrite(w.typeURL, err)
			return "", fmt.Errorf("plane: %w", err)
		}
		items[i] = store.Item{Name: r.GetName(), Value: b}
	}
	p.mu.Unlock()
	defer p.mu.Lock()
	var (
		sv  uint64
		err error
	)
	began := time.Now()
	var unknown error // the first attempt whose outcome is unknown
	for attempt := 1; ; attempt++ {
		if w.replace {
			sv, err = p.st.Replace(ctx, w.typeURL, w.base, items, w.audit...)
		} else {
			sv, err = p.st.Update(ctx, w.typeURL, items, w.del, w.audit...)
		}
		if errors.Is(err, store.ErrOutcomeUnknown) && unknown == nil {
			unknown = err
		}
		if !w.repeatable || !errors.Is(err, store.ErrOutcomeUnknown) || attempt == maxRepeats || ctx.Err() != nil {
			break
		}
		// The answer was lost (an etcd leader that died with the write
		// in flight): write the same records again, once the backend
		// answers. Done twice, it stores them once.
		p.log.Warn("store write outcome unknown; writing it again", "type", short(w.typeURL), "attempt", attempt, "error", err)
		select {
		case <-ctx.Done():
		case <-time.After(repeatBackoff):
		}
	}
	if err != nil && unknown != nil && !errors.Is(err, store.ErrOutcomeUnknown) {
		// A later attempt was refused, but an earlier one may still be
		// applied: say that, not the refusal.
		err = unknown
	}
	p.countWrite(w.typeURL, err)
	if err != nil {
		return "", fmt.Errorf("plane: store %s: %w", resource.Short(w.typeURL), err)
	}
	committed := time.Now()
	p.phase(w.typeURL, writePhaseCommit, committed.Sub(began))
	p.mu.Lock()
	if p.rev+1 == sv {
		// Every commit before this one is served (no revision lies
		// between): serve this one here, as the feed would, instead of
		// waiting for the feed's goroutine to wake up and then wake this
		// one. The feed's copy of it is then skipped as already held.
		p.serveOwn(sv, w)
	}
	p.mu.Unlock()
	if err := p.waitServed(ctx, sv); err != nil {
		return "", fmt.Errorf("plane: %s committed at %d, not yet served: %w", resource.Short(w.typeURL), sv, err)
	}
	p.phase(w.typeURL, writePhaseServed, time.Since(committed))
	p.mu.Lock()
	v := p.xds.Versions()[w.typeURL]
	p.mu.Unlock()
	return v, nil
}

// serveOwn serves w, committed at rev, the revision after the last one
// served (callers hold mu).
func (p *Plane) serveOwn(rev uint64, w write) {
	put := make(map[string]proto.Message, len(w.put))
	for _, r := range w.put {
		put[r.GetName()] = r
	}
	deleted := w.del
	if w.replace {
		deleted = make([]string, 0, len(p.res[w.typeURL]))
		for name := range p.res[w.typeURL] {
			deleted = append(deleted, name)
		}
	}
	p.serveChange(w.typeURL, rev, put, deleted)
	p.advance(rev)
}

// lockWrite takes the write lock and mu (planning reads the copy).
func (p *Plane) lockWrite() {
	p.wmu.Lock()
	p.mu.Lock()
}

func (p *Plane) unlockWrite() {
	p.mu.Unlock()
	p.wmu.Unlock()
}
