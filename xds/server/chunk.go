package xdsserver

import (
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

// splittable reports whether a delta of typeURL may reach a replica in
// several responses. Revocations and approvals may: a replica that holds
// part of a delta enforces a subset of the records, which denies no
// less than what it had. Policies may not (half a policy set can allow
// what the whole denies), nor keys (they are few and small).
func splittable(typeURL string) bool {
	return typeURL == mandatev1.RevocationTypeURL || typeURL == mandatev1.ApprovalTypeURL
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
