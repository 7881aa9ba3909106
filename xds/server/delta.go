package xdsserver

import (
	"context"
	"fmt"
	"maps"
	"strconv"
	"sync"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// deltaCache serves the delta watches of one mandate.v1 type so that a
// push costs each stream the resources that changed, not the resources
// held: every resource is marshaled and hashed once per change (the bytes
// are shared by every stream's response), each change is logged by
// cache version, and each stream's returned-resources map carries the
// cache version it was last brought up to (seqKey), so its next delta is
// the names logged since then. A stream without a usable mark (its first
// request, a change of its subscription, a log that no longer reaches
// back to its mark) is compared against everything, as go-control-plane's
// LinearCache does for every stream on every push.
//
// A change computes each waiting stream's response at once, under the
// cache's lock, while the watch is registered (so the stream's goroutine
// does not touch the stream's map meanwhile), and queues it on the
// stream's channel: responses are built in the order the stream sends
// them, so a delta never overtakes an older one. That costs the writer
// O(changed) per stream. A delta larger than budget goes out in chunks
// (see build).
//
// State-of-the-world watches are served by the embedded LinearCache,
// kept in step (the same changes, one cache version per update).
type deltaCache struct {
	*cachev3.LinearCache
	typeURL string
	// anyType is the type of the Any around each resource: the typeURL,
	// or mandatev1.RevocationShardTypeURL for Revocations.
	anyType string
	// budget bounds one response; 0: never split (Policy and
	// VerificationKey: half a policy set could allow what the whole
	// denies).
	budget int

	mu      sync.Mutex
	seq     uint64 // cache version: one per update
	seqText string // seq in decimal, the system_version_info of a response
	res     map[string]cachedBytes
	log     []logEntry // the changes of the last versions, oldest first
	logSize int        // names in log
	// logVersions and logNames bound the log (maxLogVersions and
	// maxLogNames; tests lower them).
	logVersions, logNames int
	watches               map[*deltaWatch]struct{}
	// fullDiffs counts the responses that compared everything (tests).
	fullDiffs int
}

// cachedBytes is one resource as every stream receives it.
type cachedBytes struct {
	value   []byte
	version string // hash of value: stable across instances, for resume
	// res is the resource as it goes out, shared by every stream's
	// response (nothing writes into it after update built it: gRPC
	// marshals it for each stream, concurrently, which only reads it).
	res *discovery.Resource
}

type logEntry struct {
	seq   uint64
	names []string // put or removed at seq
}

type deltaWatch struct {
	req *cachev3.DeltaRequest
	sub cachev3.Subscription
	out chan cachev3.DeltaResponse
	// fresh: compare everything, whatever the stream's map says.
	fresh bool
}

// seqKey is the entry of a stream's returned-resources map that holds the
// cache version the stream was last brought up to. Resource names are
// never empty and never start with a NUL; a client's
// initial_resource_versions cannot set it (it is dropped from the
// stream's first request).
const seqKey = "\x00seq"

// Bounds of the change log: past them the oldest versions are dropped
// and a stream that lags further is compared against everything.
const (
	maxLogVersions = 1024
	maxLogNames    = mandatev1.RevocationShards
)

func newDeltaCache(lc *cachev3.LinearCache, typeURL string, budget int) *deltaCache {
	return &deltaCache{LinearCache: lc, typeURL: typeURL, anyType: anyTypeOf(typeURL), budget: budget,
		seqText: "0", res: map[string]cachedBytes{}, watches: map[*deltaWatch]struct{}{},
		logVersions: maxLogVersions, logNames: maxLogNames}
}

// anyTypeOf is the type of the Any that carries each resource of typeURL.
func anyTypeOf(typeURL string) string {
	if typeURL == mandatev1.RevocationTypeURL {
		return mandatev1.RevocationShardTypeURL
	}
	return typeURL
}

// update puts and removes resources as one new cache version, in this
// cache and in the LinearCache, and wakes the streams it concerns.
// Called under the server's setMu: one update at a time.
func (c *deltaCache) update(put map[string]types.Resource, remove []string) error {
	marshaled := make(map[string]cachedBytes, len(put))
	for name, r := range put {
		b, err := cachev3.MarshalResource(r)
		if err != nil {
			return fmt.Errorf("xdsserver: marshal %s %q: %w", shortType(c.typeURL), name, err)
		}
		v := cachev3.HashResource(b)
		marshaled[name] = cachedBytes{value: b, version: v,
			res: &discovery.Resource{Name: name, Version: v, Resource: &anypb.Any{TypeUrl: c.anyType, Value: b}}}
	}
	names := make([]string, 0, len(put)+len(remove))
	c.mu.Lock()
	c.seq++
	c.seqText = strconv.FormatUint(c.seq, 10)
	for name, cb := range marshaled {
		c.res[name] = cb
		names = append(names, name)
	}
	for _, name := range remove {
		delete(c.res, name)
		names = append(names, name)
	}
	c.log = append(c.log, logEntry{seq: c.seq, names: names})
	c.logSize += len(names)
	for len(c.log) > 1 && (len(c.log) > c.logVersions || c.logSize > c.logNames) {
		c.logSize -= len(c.log[0].names)
		c.log[0] = logEntry{}
		c.log = c.log[1:]
	}
	for w := range c.watches {
		if !w.concerned(names) {
			continue
		}
		if r := c.respondLocked(w); r.carries() {
			delete(c.watches, w)
			w.out <- r
		}
	}
	c.mu.Unlock()
	// The LinearCache serves the SotW watches; its version moves with
	// this one (one increment per call).
	return c.LinearCache.UpdateResources(put, remove)
}

// concerned reports whether a change of names may concern w.
func (w *deltaWatch) concerned(names []string) bool {
	if w.sub.IsWildcard() {
		return true
	}
	subscribed := w.sub.SubscribedResources()
	for _, n := range names {
		if _, ok := subscribed[n]; ok {
			return true
		}
	}
	return false
}

// CreateDeltaWatch implements cachev3.ConfigWatcher. It runs in the
// stream's goroutine: it answers at once when the stream misses
// something, else registers the watch.
func (c *deltaCache) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, out chan cachev3.DeltaResponse) (func(), error) {
	if req.GetTypeUrl() != c.typeURL {
		return nil, fmt.Errorf("xdsserver: request for %s on the %s cache", req.GetTypeUrl(), shortType(c.typeURL))
	}
	// A change of subscription, or a client that wrote the mark into its
	// initial_resource_versions: compare everything.
	_, forged := req.GetInitialResourceVersions()[seqKey]
	fresh := forged || len(req.GetResourceNamesSubscribe()) > 0 || len(req.GetResourceNamesUnsubscribe()) > 0
	w := &deltaWatch{req: req, sub: sub, out: out, fresh: fresh}
	first := sub.IsWildcard() && req.GetResponseNonce() == ""
	c.mu.Lock()
	defer c.mu.Unlock()
	// An ACK of the latest version (the usual request) has nothing to
	// answer: no response is built.
	if mark, marked := markOf(sub.ReturnedResources()); first || fresh || !marked || mark != c.seq {
		if r := c.respondLocked(w); first || r.carries() {
			out <- r
			return nil, nil
		}
	}
	c.watches[w] = struct{}{}
	return func() {
		c.mu.Lock()
		delete(c.watches, w)
		c.mu.Unlock()
	}, nil
}

// markOf returns the cache version a returned-resources map was brought
// up to.
func markOf(known map[string]string) (uint64, bool) {
	s, ok := known[seqKey]
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseUint(s, 10, 64)
	return v, err == nil
}

// CreateWatch implements cachev3.ConfigWatcher: state-of-the-world
// responses come from the LinearCache, with their resources in Anys of
// anyType.
func (c *deltaCache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, out chan cachev3.Response) (func(), error) {
	if c.anyType == c.typeURL {
		return c.LinearCache.CreateWatch(req, sub, out)
	}
	in := make(chan cachev3.Response, 1)
	cancel, err := c.LinearCache.CreateWatch(req, sub, in)
	if err != nil {
		return nil, err
	}
	return forward(in, out, func(r cachev3.Response) cachev3.Response {
		if raw, ok := r.(*cachev3.RawResponse); ok {
			return retypedSotW{RawResponse: raw, anyType: c.anyType}
		}
		return r
	}, cancel), nil
}

// deltaResponse is one delta response to one stream.
type deltaResponse struct {
	req  *discovery.DeltaDiscoveryRequest
	resp discovery.DeltaDiscoveryResponse
	// known is the stream's returned-resources map, brought up to what
	// resp carries.
	known map[string]string
	// one holds resp's resource when it carries one (the usual push):
	// no slice of its own.
	one [1]*discovery.Resource
}

func (r *deltaResponse) carries() bool {
	return len(r.resp.GetResources()) > 0 || len(r.resp.GetRemovedResources()) > 0
}

// respondLocked builds w's response from the stream's returned-resources
// map and the cache's state. A map this cache marked is its own (the
// server made the map it got back the stream's, and nothing else reads
// it): it is updated in place. Any other (the client's
// initial_resource_versions, in the request) is copied first, and
// compared with everything. Called under c.mu, while w is registered or
// being created.
func (c *deltaCache) respondLocked(w *deltaWatch) *deltaResponse {
	sub := w.sub
	known := sub.ReturnedResources()
	var updated, removed []string
	mark, marked := markOf(known)
	if !marked || w.fresh {
		marked = false
		known = maps.Clone(known)
		if known == nil {
			known = map[string]string{}
		}
		delete(known, seqKey)
	}
	if marked && mark == c.seq {
		// Up to date.
	} else if marked && mark < c.seq && len(c.log) > 0 && c.log[0].seq <= mark+1 {
		since := c.log[len(c.log)-int(c.seq-mark):]
		if len(since) == 1 {
			// The common case, one version behind: the names of one
			// update are distinct.
			for _, n := range since[0].names {
				updated, removed = c.diffOne(sub, known, n, updated, removed)
			}
		} else {
			seen := map[string]struct{}{}
			for _, e := range since {
				for _, n := range e.names {
					if _, dup := seen[n]; dup {
						continue
					}
					seen[n] = struct{}{}
					updated, removed = c.diffOne(sub, known, n, updated, removed)
				}
			}
		}
	} else {
		c.fullDiffs++
		updated, removed = c.diffAll(sub, known)
	}
	r := &deltaResponse{req: w.req, known: known}
	c.build(&r.resp, r.one[:0], known, updated, removed)
	return r
}

// diffOne files name as updated or removed when the stream's version of
// it is not the cache's.
func (c *deltaCache) diffOne(sub cachev3.Subscription, known map[string]string, name string, updated, removed []string) ([]string, []string) {
	kv, isKnown := known[name]
	cb, exists := c.res[name]
	_, subscribed := sub.SubscribedResources()[name]
	switch {
	case exists && (sub.IsWildcard() || subscribed):
		if !isKnown || kv != cb.version {
			updated = append(updated, name)
		}
	case isKnown:
		removed = append(removed, name)
	}
	return updated, removed
}

// diffAll compares everything the stream knows and is subscribed to
// with the cache.
func (c *deltaCache) diffAll(sub cachev3.Subscription, known map[string]string) (updated, removed []string) {
	if sub.IsWildcard() {
		for name, cb := range c.res {
			if kv, ok := known[name]; !ok || kv != cb.version {
				updated = append(updated, name)
			}
		}
	} else {
		for name := range sub.SubscribedResources() {
			if cb, ok := c.res[name]; ok {
				if kv, ok := known[name]; !ok || kv != cb.version {
					updated = append(updated, name)
				}
			}
		}
	}
	for name := range known {
		if name == seqKey {
			continue
		}
		if _, ok := c.res[name]; !ok {
			removed = append(removed, name)
			continue
		}
		if _, ok := sub.SubscribedResources()[name]; !ok && !sub.IsWildcard() {
			removed = append(removed, name)
		}
	}
	return updated, removed
}

// build turns the names into a response within the budget (the
// removals first, then the resources, at least one item), and records
// what it carries in known. A response that carries everything marks
// known with the cache version; a chunk leaves the mark as it was, so
// the next response looks at the same changes again (what this chunk
// carried is skipped then: known has it).
// resp is filled in; its resources go into buf when they fit.
func (c *deltaCache) build(resp *discovery.DeltaDiscoveryResponse, buf []*discovery.Resource, known map[string]string, updated, removed []string) {
	resp.TypeUrl = c.typeURL
	over := resourceOverhead(c.anyType)
	used, complete := 0, true
	for _, name := range removed {
		n := len(name) + 8
		if c.budget > 0 && used+n > c.budget && len(resp.RemovedResources) > 0 {
			complete = false
			break
		}
		used += n
		resp.RemovedResources = append(resp.RemovedResources, name)
		delete(known, name)
	}
	if complete && len(updated) > 0 {
		resp.Resources = buf
		if cap(buf) < len(updated) {
			resp.Resources = make([]*discovery.Resource, 0, len(updated))
		}
		for _, name := range updated {
			cb := c.res[name]
			n := len(cb.value) + len(name) + len(cb.version) + over
			if c.budget > 0 && used+n > c.budget && (len(resp.Resources) > 0 || len(resp.RemovedResources) > 0) {
				complete = false
				break
			}
			used += n
			resp.Resources = append(resp.Resources, cb.res)
			known[name] = cb.version
		}
	}
	resp.SystemVersionInfo = c.seqText
	if complete {
		known[seqKey] = resp.SystemVersionInfo
	} else {
		resp.SystemVersionInfo += mandatev1.PartialVersionSuffix
	}
}

func (r *deltaResponse) GetDeltaDiscoveryResponse() (*discovery.DeltaDiscoveryResponse, error) {
	return &r.resp, nil
}
func (r *deltaResponse) GetDeltaRequest() *discovery.DeltaDiscoveryRequest { return r.req }
func (r *deltaResponse) GetSystemVersion() (string, error)                 { return r.resp.GetSystemVersionInfo(), nil }
func (r *deltaResponse) GetResponseVersion() string                        { return r.resp.GetSystemVersionInfo() }
func (r *deltaResponse) GetNextVersionMap() map[string]string              { return r.known }
func (r *deltaResponse) GetReturnedResources() map[string]string           { return r.known }
func (r *deltaResponse) GetContext() context.Context                       { return context.Background() }
