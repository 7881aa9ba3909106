package policytest_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"

	"github.com/mandate-dev/mandate/authz"
	"github.com/mandate-dev/mandate/authz/identity"
	"github.com/mandate-dev/mandate/policies"
	"github.com/mandate-dev/mandate/policies/examples"
	"github.com/mandate-dev/mandate/policies/policytest"
)

// TestDecidesAsReplica runs hostile requests both through `mandatectl
// test` (policytest) and through a replica (authz.Server) on the example
// policies: the two must agree on effect and reason. (Which trust domains
// are accepted is the one deployment setting they do not share: policy
// tests trust the domains their cases name.)
func TestDecidesAsReplica(t *testing.T) {
	set, err := policies.LoadFS(examples.FS)
	if err != nil {
		t.Fatal(err)
	}
	res, err := identity.New(identity.Config{TrustDomains: []spiffeid.TrustDomain{spiffeid.RequireTrustDomainFromString("example.org")}})
	if err != nil {
		t.Fatal(err)
	}
	store := authz.NewStateStore(nil)
	store.Update(func(s *authz.State) { s.Policies = set })
	srv, err := authz.NewServer(authz.Config{Identity: res, State: store, Now: func() time.Time { return policytest.DefaultNow }})
	if err != nil {
		t.Fatal(err)
	}
	const infra = "spiffe://example.org/agent/infra/a1"
	const config = "spiffe://example.org/svc/config"
	cases := []policytest.Request{
		{Subject: infra, Destination: config, Host: "config.internal", Method: "GET", Path: "/config/app.yaml"},
		{Subject: infra, Destination: config, Host: "config.internal", Method: "GET", Path: "/config/../secrets/db-password"},
		{Subject: infra, Destination: config, Host: "config.internal", Method: "GET", Path: "//secrets/db-password"},
		{Subject: infra, Destination: config, Host: "config.internal", Method: "GET", Path: "/%73ecrets/db-password"},
		{Subject: infra, Destination: config, Host: "config.internal", Method: "GET", Path: "/x/%2e%2e/secrets/a"},
		{Subject: infra, Destination: config, Host: "config.internal", Method: "GET", Path: "/secrets%2Fdb"},
		{Subject: infra, Destination: config, Host: "Config.Internal.:8443", Method: "GET", Path: "/config/a"},
		{Subject: infra, Destination: config, Host: "config.internal:8443:80", Method: "GET", Path: "/config/a"},
		{Subject: infra, Destination: config, Host: "config.internal", Method: "G ET", Path: "/config/a"},
		{Subject: infra, Destination: config, Host: "config.internal", Method: "GET", Path: "/config/a", Intent: "bad intent"},
		{Subject: "spiffe://example.org/agent/infra/a1/", Destination: config, Host: "config.internal", Method: "GET", Path: "/config/a"},
	}
	for _, c := range cases {
		c := c
		rep := policytest.Run(set, []*policytest.Suite{{Metadata: policytest.Metadata{Name: "s"},
			Cases: []policytest.Case{{Name: "c", Request: c, Expect: policytest.Expect{Effect: "allow"}}}}})
		got := rep.Results[0].Decision
		resp, err := srv.Check(context.Background(), c.CheckRequest())
		if err != nil {
			t.Fatal(err)
		}
		effect, reason := "allow", "allowed"
		if codes.Code(resp.GetStatus().GetCode()) != codes.OK {
			var body struct{ Reason string }
			if err := json.Unmarshal([]byte(resp.GetDeniedResponse().GetBody()), &body); err != nil {
				t.Fatal(err)
			}
			effect, reason = "deny", body.Reason
		}
		if got.Effect.String() != effect || string(got.Reason) != reason {
			t.Errorf("%s %s %s: mandatectl test says %s/%s, the replica %s/%s",
				c.Method, c.Host, c.Path, got.Effect, got.Reason, effect, reason)
		}
	}
}
