package xdsserver

import (
	"context"
	"fmt"
	"maps"
	"sync"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// chunkBytes is the budget of one chunk of a split delta, below
// mandatev1.MaxResponseBytes by room for the envelope (type URL, nonce, version).
const chunkBytes = mandatev1.MaxResponseBytes - 64<<10

// resourceOverhead bounds what a discovery.Resource adds around a
// resource's bytes besides its name and version (tags, lengths, the Any's
// type URL).
func resourceOverhead(typeURL string) int { return len(typeURL) + 32 }

// maxNameBytes bounds a resource name (the plane's revocation ids and
// approval names are shorter) when removals are counted, not measured.
const maxNameBytes = 256

// splittable reports whether a delta of typeURL may reach a replica in
// several responses. Revocations and approvals may: a replica that holds
// part of a delta enforces a subset of the records, which denies no
// less than what it had. Policies may not (half a policy set can allow
// what the whole denies), nor keys (they are few and small).
func splittable(typeURL string) bool {
	return typeURL == mandatev1.RevocationTypeURL || typeURL == mandatev1.ApprovalTypeURL
}

// chunkingCache is a LinearCache whose delta responses never exceed
// budget bytes: a larger delta is cut into chunks, each sent as its own
// response whose returned-resources map holds only what it carried, so
// that when the replica ACKs it the cache answers the next request with
// the rest. Every chunk but the last carries a version ending in
// mandatev1.PartialVersionSuffix: the replica holds it back until the last
// chunk, and the server does not count its ACK as an ACK of the version.
type chunkingCache struct {
	*cachev3.LinearCache
	typeURL string
	// anyType is the type of the Any around each resource: the typeURL,
	// or mandatev1.RevocationShardTypeURL for the Revocation type, whose
	// resources are shards of records.
	anyType string
	budget  int
}

// anyTypeOf is the type of the Any that carries each resource of typeURL.
func anyTypeOf(typeURL string) string {
	if typeURL == mandatev1.RevocationTypeURL {
		return mandatev1.RevocationShardTypeURL
	}
	return typeURL
}

// CreateDeltaWatch implements cachev3.ConfigWatcher.
func (c *chunkingCache) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, out chan cachev3.DeltaResponse) (func(), error) {
	in := make(chan cachev3.DeltaResponse, 1)
	cancel, err := c.LinearCache.CreateDeltaWatch(req, sub, in)
	if err != nil {
		return nil, err
	}
	return forward(in, out, func(r cachev3.DeltaResponse) cachev3.DeltaResponse { return c.split(r, sub) }, cancel), nil
}

// CreateWatch implements cachev3.ConfigWatcher: state-of-the-world
// responses are not split, but their resources go out in Anys of
// anyType.
func (c *chunkingCache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, out chan cachev3.Response) (func(), error) {
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

// forward passes the watch's response from in to out through conv. The
// server closes out after it cancels the watch: the returned cancel
// waits for the forwarding goroutine, so nothing is sent on a closed out.
func forward[R any](in, out chan R, conv func(R) R, cancel func()) func() {
	select {
	case r := <-in: // answered at once, as the linear cache does in its caller's goroutine
		out <- conv(r)
		return cancel
	default:
	}
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		select {
		case r := <-in:
			select {
			case out <- conv(r):
			case <-done:
			}
		case <-done:
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			if cancel != nil {
				cancel()
			}
			<-exited
		})
	}
}

// retypedSotW is retyped for a state-of-the-world response.
type retypedSotW struct {
	*cachev3.RawResponse
	anyType string
}

func (r retypedSotW) GetDiscoveryResponse() (*discovery.DiscoveryResponse, error) {
	resp, err := r.RawResponse.GetDiscoveryResponse()
	if err != nil {
		return nil, err
	}
	for _, a := range resp.GetResources() {
		a.TypeUrl = r.anyType
	}
	return resp, nil
}

// split returns r when it fits the budget, else its first chunk. It
// measures the resources the cache marshaled (once per resource, for
// every stream): its cost is in the number of resources of the delta,
// plus one pass over what the replica holds when the delta is split or
// removes names.
func (c *chunkingCache) split(r cachev3.DeltaResponse, sub cachev3.Subscription) cachev3.DeltaResponse {
	raw, ok := r.(*cachev3.RawDeltaResponse)
	if !ok {
		return r
	}
	full, err := raw.GetDeltaDiscoveryResponse()
	if err != nil {
		return &chunk{req: raw.GetDeltaRequest(), version: raw.GetResponseVersion(), returned: raw.GetReturnedResources(),
			ctx: raw.GetContext(), err: fmt.Errorf("xdsserver: marshal %s: %w", shortType(c.typeURL), err)}
	}
	for _, res := range full.GetResources() {
		if res.GetResource() != nil {
			res.Resource.TypeUrl = c.anyType
		}
	}
	next := raw.GetReturnedResources()
	known := sub.ReturnedResources()
	res := full.GetResources()
	over := resourceOverhead(c.anyType)
	size := func(r *discovery.Resource) int {
		return len(r.GetResource().GetValue()) + len(r.GetName()) + len(r.GetVersion()) + over
	}
	// How many names the delta removes: what the replica knew, plus what
	// is new to it, less what it will know.
	used, fits, added := 0, len(res), 0
	for i, rs := range res {
		if _, ok := known[rs.GetName()]; !ok {
			added++
		}
		n := size(rs)
		if used+n > c.budget && fits == len(res) {
			fits = i
		}
		used += n
	}
	removedCount := len(known) + added - len(next)
	if fits == len(res) && used+removedCount*(maxNameBytes+8) <= c.budget {
		return r
	}
	var removed []string
	if removedCount > 0 {
		removed = make([]string, 0, removedCount)
		for name := range known {
			if _, ok := next[name]; !ok {
				removed = append(removed, name)
			}
		}
	}
	returned := maps.Clone(known)
	resp := &discovery.DeltaDiscoveryResponse{TypeUrl: c.typeURL, SystemVersionInfo: raw.GetResponseVersion()}
	used = 0
	for _, name := range removed {
		if used+len(name)+8 > c.budget {
			break
		}
		used += len(name) + 8
		resp.RemovedResources = append(resp.RemovedResources, name)
		delete(returned, name)
	}
	for _, rs := range res {
		n := size(rs)
		if used+n > c.budget && (len(resp.Resources) > 0 || len(resp.RemovedResources) > 0) {
			break
		}
		used += n
		resp.Resources = append(resp.Resources, rs)
		returned[rs.GetName()] = rs.GetVersion()
	}
	if len(resp.RemovedResources) < len(removed) || len(resp.Resources) < len(res) {
		resp.SystemVersionInfo += mandatev1.PartialVersionSuffix
	}
	return &chunk{req: raw.GetDeltaRequest(), resp: resp, returned: returned, version: resp.GetSystemVersionInfo(),
		ctx: raw.GetContext()}
}

// chunk is one response of a split delta.
type chunk struct {
	req      *discovery.DeltaDiscoveryRequest
	resp     *discovery.DeltaDiscoveryResponse
	returned map[string]string
	version  string
	ctx      context.Context
	err      error
}

func (c *chunk) GetDeltaDiscoveryResponse() (*discovery.DeltaDiscoveryResponse, error) {
	return c.resp, c.err
}
func (c *chunk) GetDeltaRequest() *discovery.DeltaDiscoveryRequest { return c.req }
func (c *chunk) GetSystemVersion() (string, error)                 { return c.version, nil }
func (c *chunk) GetResponseVersion() string                        { return c.version }
func (c *chunk) GetNextVersionMap() map[string]string              { return c.returned }
func (c *chunk) GetReturnedResources() map[string]string           { return c.returned }
func (c *chunk) GetContext() context.Context                       { return c.ctx }
