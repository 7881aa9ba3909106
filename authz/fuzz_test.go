package authz

import (
	"context"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"
)

// FuzzCheck drives the whole Check path with hostile attributes. Check
// recovers panics into denies, so the fuzzer watches for the
// internal_error reason instead, and for any allow the inputs could not
// justify.
func FuzzCheck(f *testing.F) {
	f.Add("spiffe://example.org/agent/support/a1", "GET", "/queue", "tickets.internal", "", "", "", "", "")
	f.Add("spiffe://example.org/agent/support/a1", "GET", "/tickets/T-1", "h", "support.read", "T-1", "T-1", "", "")
	f.Add("spiffe://example.org/gateway", "GET", "/queue", "h", "", "", "", `By=spiffe://example.org/gateway;URI=spiffe://example.org/agent/support/a1`, "")
	f.Add("spiffe://example.org/agent/pay", "POST", "/refunds", "h", "", "T", "", "", "")
	f.Add("", "GET", "//admin/../queue", "h:80", "a,b", "", "", "", "a.b.c")
	f.Add("spiffe://EXAMPLE.org/x", "GET", "/%2e%2e/secrets", "[::1]:8", "", "", "", "", "")
	f.Fuzz(func(t *testing.T, principal, method, path, host, intent, task, ticket, xfcc, token string) {
		h := newHarness(t, nil)
		hdrs := map[string]string{":method": method, ":path": path}
		for k, v := range map[string]string{"x-mandate-intent": intent, "x-mandate-task": task, "x-ticket": ticket,
			"x-forwarded-client-cert": xfcc, "x-mandate": token} {
			if v != "" {
				hdrs[k] = v
			}
		}
		req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source: &authv3.AttributeContext_Peer{Principal: principal},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: method, Path: path, Host: host, Headers: hdrs,
			}},
			ContextExtensions: map[string]string{"sensitivity": task},
		}}
		for i := 0; i < 2; i++ { // second pass: the cache answers
			resp, err := h.srv.Check(context.Background(), req)
			if err != nil {
				t.Fatalf("RPC error %v", err)
			}
			code := codes.Code(resp.GetStatus().GetCode())
			if code == codes.OK {
				if principal == "" || !strings.HasPrefix(principal, "spiffe://example.org/") {
					t.Fatalf("allowed a request whose peer principal is %q", principal)
				}
				if token != "" {
					t.Fatal("allowed a request carrying an unverifiable mandate")
				}
				continue
			}
			if code != codes.PermissionDenied {
				t.Fatalf("status %v", code)
			}
			if strings.Contains(resp.GetDeniedResponse().GetBody(), "internal_error") {
				t.Fatalf("panic in the decision path for %+v", req)
			}
		}
	})
}
