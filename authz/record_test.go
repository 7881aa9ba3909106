package authz

import (
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
)

// Decision records join the request's trace: Envoy's request id and the
// trace id of a valid traceparent, on allows and denies alike.
func TestRecordCarriesRequestAndTraceIDs(t *testing.T) {
	h := newHarness(t, nil)
	withID := func(id string) reqOpt {
		return func(r *authv3.CheckRequest) { r.Attributes.Request.Http.Id = id }
	}
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	for _, tc := range []struct {
		name        string
		req         *authv3.CheckRequest
		reqID, trID string
	}{
		{"allow", checkReq("GET", "/queue", withID("req-1"), hdr("traceparent", tp)), "req-1", "4bf92f3577b34da6a3ce929d0e0e4736"},
		{"deny", checkReq("GET", "/nowhere", withID("req-2"), hdr("traceparent", tp)), "req-2", "4bf92f3577b34da6a3ce929d0e0e4736"},
		{"refused path", checkReq("GET", "/%zz", withID("req-3"), hdr("traceparent", tp)), "req-3", "4bf92f3577b34da6a3ce929d0e0e4736"},
		{"bad traceparent", checkReq("GET", "/queue", withID("req-4"), hdr("traceparent", "00-xyz")), "req-4", ""},
	} {
		h.check(t, tc.req)
		rec := h.log.last()
		if rec.RequestID != tc.reqID || rec.TraceID != tc.trID {
			t.Errorf("%s: record request_id %q trace_id %q, want %q %q", tc.name, rec.RequestID, rec.TraceID, tc.reqID, tc.trID)
		}
	}
}
