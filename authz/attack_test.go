package authz

import (
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/mandate-dev/mandate/policies"
	"github.com/mandate-dev/mandate/policies/examples"
)

// TestAttacksOnExamplePolicies tries, as a hostile infra agent would,
// to read secrets that the embedded example policies' never-read-secrets
// rule forbids, through the config service whose read-config rule allows
// any GET. Each must be denied with its reason code.
func TestAttacksOnExamplePolicies(t *testing.T) {
	set, err := policies.LoadFS(examples.FS)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, nil)
	h.store.Update(func(s *State) { s.Policies = set })
	const infra = "spiffe://example.org/agent/infra/a1"
	req := func(method, path string, opts ...reqOpt) *authv3.CheckRequest {
		r := checkReq(method, path, append([]reqOpt{principal(infra), func(r *authv3.CheckRequest) {
			r.Attributes.Destination.Principal = "spiffe://example.org/svc/config"
			r.Attributes.Request.Http.Host = "config.internal"
		}}, opts...)...)
		return r
	}
	host := func(h string) reqOpt {
		return func(r *authv3.CheckRequest) { r.Attributes.Request.Http.Host = h }
	}
	// The baseline: reading config is allowed, reading secrets is not.
	if res := h.check(t, req("GET", "/config/app.yaml")); !res.allowed {
		t.Fatalf("baseline config read denied: %+v", res)
	}
	if res := h.check(t, req("GET", "/secrets/db-password")); res.allowed || res.reason != "denied_by_rule" {
		t.Fatalf("baseline secret read: %+v", res)
	}
	for _, tc := range []struct {
		name   string
		req    *authv3.CheckRequest
		reason string
	}{
		{"servlet path parameter", req("GET", "/secrets;jsessionid=x/db-password"), "path_parameter"},
		{"empty path parameter", req("GET", "/secrets;/db-password"), "path_parameter"},
		{"encoded path parameter", req("GET", "/secrets%3Bx/db-password"), "path_parameter"},
		{"double decoding", req("GET", "/%2573ecrets/db-password"), "double_encoding"},
		{"trailing dot", req("GET", "/secrets./db-password"), "trailing_dot"},
		{"encoded trailing dot", req("GET", "/secrets%2E/db-password"), "trailing_dot"},
		{"method override", req("GET", "/config/app.yaml", hdr("x-http-method-override", "DELETE")), "method_override"},
		{"method override x-http-method", req("GET", "/config/app.yaml", hdr("x-http-method", "PUT")), "method_override"},
		{"method override x-method-override", req("GET", "/config/app.yaml", hdr("x-method-override", "PUT")), "method_override"},
		{"opted-in parameters are stripped, then denied",
			req("GET", "/secrets;jsessionid=x/db-password", labels(policies.LabelPathParameters, "strip")), "denied_by_rule"},
		{"case-insensitive upstream", req("GET", "/SECRETS/db-password", labels(policies.LabelPathCase, "insensitive")), "denied_by_rule"},
		{"case-insensitive upstream, encoded", req("GET", "/%53ecrets/db-password", labels(policies.LabelPathCase, "insensitive")), "denied_by_rule"},
		{"Connect GET of a denied gRPC method", req("GET", "/vault.v1.Secrets/Read?connect=v1&encoding=json&message=%7B%7D"), "denied_by_rule"},
		{"merged content-type", req("POST", "/vault.v1.Secrets/Read", hdr("content-type", "text/plain,application/grpc")), "denied_by_rule"},
		{"grpc-web", req("POST", "/vault.v1.Secrets/Read", hdr("content-type", "application/grpc-web-text")), "denied_by_rule"},
		{"two ports", req("GET", "/config/app.yaml", host("config.internal:8443:80")), "bad_host"},
		{"userinfo", req("GET", "/config/app.yaml", host("agent@config.internal")), "bad_host"},
		{"empty port", req("GET", "/config/app.yaml", host("config.internal:")), "bad_host"},
		{"headers over --max-header-bytes", req("GET", "/config/app.yaml", hdr("x-pad", strings.Repeat("a", 65<<10))), "headers_too_large"},
	} {
		res := h.check(t, tc.req)
		if res.allowed || res.reason != tc.reason {
			t.Errorf("%s: allowed=%v reason=%q, want a deny %q", tc.name, res.allowed, res.reason, tc.reason)
		}
	}
}
