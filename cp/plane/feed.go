package plane

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/xds/resource"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

// ServerOptions returns the xdsserver options that make a server built
// over st start each type where the store left it: an empty type at its
// stored version, a type with resources just below it (New publishes
// them at the stored version).
func ServerOptions(ctx context.Context, st Store) ([]xdsserver.Option, error) {
	if st == nil {
		return nil, errors.New("plane: nil store")
	}
	var opts []xdsserver.Option
	for _, k := range resource.Kinds() {
		items, v, err := st.List(ctx, k.TypeURL)
		if err != nil {
			return nil, fmt.Errorf("plane: load %s: %w", k.Short, err)
		}
		if v > 0 && len(items) > 0 {
			v--
		}
		opts = append(opts, xdsserver.WithInitialVersion(k.TypeURL, v))
	}
	return opts, nil
}

// load reads every resource kind from the store, after noting the
// revision it starts from: every commit after rev is in the feed, and
// each type's content is at least as new as rev.
func (p *Plane) load(ctx context.Context) (rev uint64, res map[string]map[string]resource.Named, versions map[string]uint64, err error) {
	if rev, err = p.st.Revision(ctx); err != nil {
		return 0, nil, nil, fmt.Errorf("plane: %w", err)
	}
	res, versions = map[string]map[string]resource.Named{}, map[string]uint64{}
	for _, k := range resource.Kinds() {
		items, v, err := p.st.List(ctx, k.TypeURL)
		if err != nil {
			return 0, nil, nil, fmt.Errorf("plane: load %s: %w", k.Short, err)
		}
		m := make(map[string]resource.Named, len(items))
		for _, it := range items {
			r, err := resource.Unmarshal(k.TypeURL, it.Name, it.Value)
			if err != nil {
				return 0, nil, nil, fmt.Errorf("plane: stored %w", err)
			}
			m[it.Name] = r
		}
		res[k.TypeURL], versions[k.TypeURL] = m, v
	}
	return rev, res, versions, nil
}

// follow applies the store's feed until ctx ends: every committed change,
// this instance's and (on etcd) every other instance's, in revision
// order. A broken feed is followed again from the last revision served;
// one that no longer reaches back that far (compacted) is replaced by a
// fresh load of the whole state.
func (p *Plane) follow(ctx context.Context) {
	defer close(p.stopped)
	backoff := 50 * time.Millisecond
	for {
		p.mu.Lock()
		from := p.rev
		p.mu.Unlock()
		err := p.st.Follow(ctx, from, p.apply)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, store.ErrCompacted) {
			p.log.Warn("store changes since the last one served are gone; reloading the whole state", "revision", from)
			err = p.reload(ctx)
		}
		if err != nil {
			p.log.Warn("following the store failed; retrying", "error", err, "in", backoff)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		if err != nil {
			backoff = min(2*backoff, 2*time.Second)
		} else {
			backoff = 50 * time.Millisecond
		}
	}
}

// apply serves one commit: each change goes to the plane's copy and to
// xDS at the commit's revision. A change a type already holds (loaded
// with the state) is skipped. A stored resource that does not decode is
// logged and left out: it never reaches a replica.
func (p *Plane) apply(rev uint64, changes []store.Change) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ch := range changes {
		if _, ok := p.res[ch.TypeURL]; !ok || ch.Version <= p.typeRev[ch.TypeURL] {
			continue
		}
		put := make(map[string]proto.Message, len(ch.Put))
		for _, it := range ch.Put {
			r, err := resource.Unmarshal(ch.TypeURL, it.Name, it.Value)
			if err != nil {
				p.log.Error("committed resource does not decode; not served", "type", short(ch.TypeURL), "error", err)
				continue
			}
			put[it.Name] = r
		}
		p.serveChange(ch.TypeURL, ch.Version, put, ch.Deleted)
	}
	p.advance(rev)
	return nil
}

// serveChange applies one committed change of a type to the plane's copy
// and publishes it over xDS at version: put are the resources created or
// replaced, deleted the names removed (a name the copy does not hold, or
// that put holds again, is left as it is). Callers hold mu and have
// checked that version is newer than the type's.
func (p *Plane) serveChange(typeURL string, version uint64, put map[string]proto.Message, deleted []string) {
	cur := p.res[typeURL]
	var del []string
	for _, name := range deleted {
		if _, held := cur[name]; held {
			if _, again := put[name]; !again {
				del = append(del, name)
			}
		}
	}
	began := time.Now()
	v, err := p.xds.UpdateAt(typeURL, version, put, del)
	p.phase(typeURL, writePhasePublish, time.Since(began))
	if _, err := p.published(typeURL, v, err); err != nil {
		p.log.Error("publishing a committed change failed", "type", short(typeURL), "version", version, "error", err)
	}
	for name, r := range put {
		cur[name] = r.(resource.Named)
	}
	for _, name := range del {
		delete(cur, name)
	}
	p.typeRev[typeURL] = version
}

// advance notes that every commit up to rev is served (callers hold mu).
func (p *Plane) advance(rev uint64) {
	if rev > p.rev {
		p.rev = rev
		close(p.progress)
		p.progress = make(chan struct{})
	}
}

// reload replaces the plane's copy by the store's whole state and
// publishes what changed.
func (p *Plane) reload(ctx context.Context) error {
	rev, res, versions, err := p.load(ctx)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, k := range resource.Kinds() {
		if versions[k.TypeURL] < p.typeRev[k.TypeURL] {
			continue // already newer
		}
		v, err := p.xds.SetAt(k.TypeURL, versions[k.TypeURL], messages(res[k.TypeURL]))
		if _, err := p.published(k.TypeURL, v, err); err != nil {
			return err
		}
		p.res[k.TypeURL], p.typeRev[k.TypeURL] = res[k.TypeURL], versions[k.TypeURL]
	}
	p.advance(rev)
	return nil
}

// waitServed returns once every commit up to rev is served.
func (p *Plane) waitServed(ctx context.Context, rev uint64) error {
	for {
		p.mu.Lock()
		done, ch := p.rev >= rev, p.progress
		p.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.stopped:
			return errors.New("plane: closed")
		case <-ch:
		}
	}
}

// Served returns the store revision up to which every commit is served.
func (p *Plane) Served() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rev
}
