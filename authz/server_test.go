package authz

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mandate-dev/mandate/authz/attrs"
	"github.com/mandate-dev/mandate/authz/decisioncache"
	"github.com/mandate-dev/mandate/authz/decisionlog"
	"github.com/mandate-dev/mandate/authz/identity"
	"github.com/mandate-dev/mandate/authz/revocation"
	"github.com/mandate-dev/mandate/policies"
)

const testPolicies = `
apiVersion: mandate.dev/v1
kind: Policy
metadata: {name: tickets}
spec:
  rules:
    - name: read-own-task
      effect: allow
      subjects: ["spiffe://example.org/agent/support/*"]
      intents: [support.read]
      actions: [{methods: [GET], paths: ["/tickets/**"]}]
      when: '"x-ticket" in request.headers && request.headers["x-ticket"] == task'
    - name: list
      effect: allow
      subjects: ["spiffe://example.org/agent/support/*"]
      actions: [{methods: [GET], paths: ["/queue"]}]
---
apiVersion: mandate.dev/v1
kind: Policy
metadata: {name: guard}
spec:
  rules:
    - name: no-secrets
      effect: deny
      subjects: ["spiffe://example.org/**"]
      actions: [{paths: ["/secrets/**"]}]
    - name: refunds
      effect: step_up
      subjects: ["spiffe://example.org/agent/pay"]
      actions: [{methods: [POST], paths: ["/refunds"]}]
    - name: pay-all
      effect: allow
      subjects: ["spiffe://example.org/agent/pay"]
      actions: [{paths: ["/**"]}]
`

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (f *fakeClock) Now() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return f.t }
func (f *fakeClock) Add(d time.Duration) {
	f.mu.Lock()
	f.t = f.t.Add(d)
	f.mu.Unlock()
}

type recLog struct {
	mu   sync.Mutex
	recs []decisionlog.Record
}

func (l *recLog) Log(r decisionlog.Record) { l.mu.Lock(); l.recs = append(l.recs, r); l.mu.Unlock() }
func (l *recLog) last() decisionlog.Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.recs[len(l.recs)-1]
}

type harness struct {
	srv   *Server
	store *StateStore
	cache *decisioncache.Cache
	clock *fakeClock
	log   *recLog
}

func compile(t testing.TB, src string) *policies.Set {
	t.Helper()
	ps, err := policies.Parse("test.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	set, err := policies.Compile(ps)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

func newHarness(t testing.TB, mutate func(*Config)) *harness {
	t.Helper()
	clk := &fakeClock{t: time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)}
	res, err := identity.New(identity.Config{
		TrustDomains:   []spiffeid.TrustDomain{spiffeid.RequireTrustDomainFromString("example.org")},
		TrustedProxies: []spiffeid.ID{spiffeid.RequireFromString("spiffe://example.org/gateway")},
	})
	if err != nil {
		t.Fatal(err)
	}
	cache, err := decisioncache.New(decisioncache.Config{MaxEntries: 1000, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cache.Close)
	store := NewStateStore(clk.Now)
	store.Update(func(s *State) { s.Policies = compile(t, testPolicies) })
	log := &recLog{}
	cfg := Config{Identity: res, State: store, Cache: cache, Log: log, Now: clk.Now}
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &harness{srv: srv, store: store, cache: cache, clock: clk, log: log}
}

type reqOpt func(*authv3.CheckRequest)

func hdr(k, v string) reqOpt {
	return func(r *authv3.CheckRequest) { r.Attributes.Request.Http.Headers[k] = v }
}

func principal(p string) reqOpt {
	return func(r *authv3.CheckRequest) { r.Attributes.Source.Principal = p }
}

func labels(kv ...string) reqOpt {
	return func(r *authv3.CheckRequest) {
		r.Attributes.ContextExtensions = map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			r.Attributes.ContextExtensions[kv[i]] = kv[i+1]
		}
	}
}

func checkReq(method, path string, opts ...reqOpt) *authv3.CheckRequest {
	r := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:      &authv3.AttributeContext_Peer{Principal: "spiffe://example.org/agent/support/a1"},
		Destination: &authv3.AttributeContext_Peer{Principal: "spiffe://example.org/svc/tickets"},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: method, Path: path, Host: "tickets.internal",
			Headers: map[string]string{":method": method, ":path": path},
		}},
	}}
	for _, o := range opts {
		o(r)
	}
	return r
}

type result struct {
	allowed  bool
	status   int
	reason   string
	approval string
	body     string
	resp     *authv3.CheckResponse
}

func (h *harness) check(t testing.TB, req *authv3.CheckRequest) result {
	t.Helper()
	resp, err := h.srv.Check(context.Background(), req)
	if err != nil {
		t.Fatalf("Check returned an RPC error %v: a deny must be RPC OK", err)
	}
	h.cache.Wait()
	res := result{resp: resp}
	switch codes.Code(resp.GetStatus().GetCode()) {
	case codes.OK:
		res.allowed = true
		ok := resp.GetOkResponse()
		if ok == nil {
			t.Fatal("allow without OkHttpResponse")
		}
		return res
	case codes.PermissionDenied:
	default:
		t.Fatalf("status code %d: a deny must be PERMISSION_DENIED", resp.GetStatus().GetCode())
	}
	d := resp.GetDeniedResponse()
	res.status = int(d.GetStatus().GetCode())
	res.body = d.GetBody()
	var body struct {
		DecisionID string `json:"decision_id"`
		Reason     string `json:"reason"`
		Approval   string `json:"approval_request"`
	}
	if err := json.Unmarshal([]byte(d.GetBody()), &body); err != nil {
		t.Fatalf("deny body %q is not JSON: %v", d.GetBody(), err)
	}
	if body.DecisionID == "" {
		t.Fatal("deny body has no decision id")
	}
	res.reason, res.approval = body.Reason, body.Approval
	return res
}

func TestDecisions(t *testing.T) {
	h := newHarness(t, nil)
	tests := []struct {
		name    string
		req     *authv3.CheckRequest
		allowed bool
		status  int
		reason  string
	}{
		{"allow with intent and matching condition",
			checkReq("GET", "/tickets/T-1", hdr("x-mandate-intent", "support.read"), hdr("x-mandate-task", "T-1"), hdr("x-ticket", "T-1")),
			true, 0, ""},
		{"condition false: other task's ticket",
			checkReq("GET", "/tickets/T-2", hdr("x-mandate-intent", "support.read"), hdr("x-mandate-task", "T-1"), hdr("x-ticket", "T-2")),
			false, 403, "no_matching_rule"},
		{"no intent declared",
			checkReq("GET", "/tickets/T-1", hdr("x-ticket", "T-1")), false, 403, "no_matching_rule"},
		{"rule without intent", checkReq("GET", "/queue"), true, 0, ""},
		{"deny overrides allow", checkReq("GET", "/secrets/db", principal("spiffe://example.org/agent/pay")), false, 403, "denied_by_rule"},
		{"dot segments normalized before deciding", checkReq("GET", "/tickets/../secrets/db", principal("spiffe://example.org/agent/pay")), false, 403, "denied_by_rule"},
		{"encoded slash refused", checkReq("GET", "/queue%2F..%2Fsecrets"), false, 403, "encoded_slash"},
		{"step up", checkReq("POST", "/refunds", principal("spiffe://example.org/agent/pay")), false, 401, "step_up_required"},
		{"no principal (no mTLS)", checkReq("GET", "/queue", principal("")), false, 403, "no_principal"},
		{"foreign trust domain", checkReq("GET", "/queue", principal("spiffe://evil.org/agent/support/a1")), false, 403, "untrusted_domain"},
		{"xfcc ignored from an untrusted peer", checkReq("GET", "/queue", principal(""),
			hdr("x-forwarded-client-cert", `By=spiffe://example.org/x;URI=spiffe://example.org/agent/support/a1`)), false, 403, "no_principal"},
		{"xfcc believed from the trusted gateway", checkReq("GET", "/queue", principal("spiffe://example.org/gateway"),
			hdr("x-forwarded-client-cert", `By=spiffe://example.org/gateway;URI=spiffe://example.org/agent/support/a1`)), true, 0, ""},
		{"duplicate intent header", checkReq("GET", "/queue", hdr("x-mandate-intent", "a,b")), false, 403, "duplicate_header"},
		{"bad method", checkReq("GE T", "/queue"), false, 403, "bad_method"},
		{"mandate without verifier", checkReq("GET", "/queue", hdr("x-mandate", "a.b.c")), false, 403, "mandate_unverifiable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Twice: the second answer comes from the cache and must agree.
			for i := 0; i < 2; i++ {
				res := h.check(t, tt.req)
				if res.allowed != tt.allowed || res.status != tt.status || res.reason != tt.reason {
					t.Fatalf("pass %d: allowed=%v status=%d reason=%q, want allowed=%v status=%d reason=%q",
						i, res.allowed, res.status, res.reason, tt.allowed, tt.status, tt.reason)
				}
			}
		})
	}
}

func TestRawHeaderMap(t *testing.T) {
	h := newHarness(t, nil)
	req := checkReq("GET", "/queue")
	req.Attributes.Request.Http.Headers = nil
	req.Attributes.Request.Http.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
		{Key: ":path", RawValue: []byte("/queue")},
		{Key: "X-Mandate-Intent", RawValue: []byte("a")},
		{Key: "x-mandate-intent", RawValue: []byte("b")},
	}}
	if res := h.check(t, req); res.allowed || res.reason != "duplicate_header" {
		t.Fatalf("repeated intent in header_map: %+v", res)
	}
}

func TestAllowResponseShape(t *testing.T) {
	h := newHarness(t, nil)
	res := h.check(t, checkReq("GET", "/queue", hdr("x-mandate-task", "T-1")))
	ok := res.resp.GetOkResponse()
	if len(ok.GetHeadersToRemove()) != 1 || ok.GetHeadersToRemove()[0] != "x-mandate" {
		t.Fatalf("headers_to_remove = %v, want [x-mandate]", ok.GetHeadersToRemove())
	}
	var id, task string
	for _, hv := range ok.GetHeaders() {
		if hv.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
			t.Errorf("%s must overwrite a client-sent value", hv.GetHeader().GetKey())
		}
		switch hv.GetHeader().GetKey() {
		case HeaderDecisionID:
			id = hv.GetHeader().GetValue()
		case HeaderTask:
			task = hv.GetHeader().GetValue()
		}
	}
	if task != "T-1" {
		t.Errorf("task header %q, want T-1", task)
	}
	rec := h.log.last()
	if id == "" || rec.DecisionID != id {
		t.Fatalf("decision id header %q, log record %q", id, rec.DecisionID)
	}
	if rec.Result != "allow" || rec.Rule != "list" || rec.Policy != "tickets" || rec.Task != "T-1" ||
		rec.Subject != "spiffe://example.org/agent/support/a1" || rec.PolicyVersion == "" {
		t.Fatalf("log record %+v", rec)
	}
	if noTask := h.check(t, checkReq("GET", "/queue")).resp.GetOkResponse(); len(noTask.GetHeaders()) != 1 {
		t.Errorf("without a task the allow sets %d headers, want only the decision id", len(noTask.GetHeaders()))
	}
}

func TestDenyBodyLeaksNoPolicy(t *testing.T) {
	h := newHarness(t, nil)
	res := h.check(t, checkReq("GET", "/secrets/x"))
	for _, leak := range []string{"guard", "no-secrets", "/secrets"} {
		if strings.Contains(res.body, leak) {
			t.Fatalf("deny body %q leaks %q", res.body, leak)
		}
	}
	if rec := h.log.last(); rec.Rule != "no-secrets" || rec.Result != "deny" {
		t.Fatalf("log record must name the rule: %+v", rec)
	}
}

func TestCacheHitThenRevocation(t *testing.T) {
	h := newHarness(t, nil)
	req := checkReq("GET", "/queue")
	if !h.check(t, req).allowed {
		t.Fatal("first request denied")
	}
	if !h.check(t, req).allowed || !h.log.last().CacheHit {
		t.Fatal("second request should be a cache hit allow")
	}
	h.store.Update(func(s *State) {
		s.Revocations, _ = revocation.NewSet([]revocation.Record{{
			ID: "r1", Kind: revocation.KindSubject, Value: "spiffe://example.org/agent/support/a1",
			Expires: h.clock.Now().Add(time.Hour),
		}})
	})
	if res := h.check(t, req); res.allowed || res.reason != "revoked" {
		t.Fatalf("after revocation: %+v", res)
	}
	// The revocation expires: the subject is decided by policy again.
	h.clock.Add(time.Hour)
	if !h.check(t, req).allowed {
		t.Fatal("denied after the revocation expired")
	}
}

// TestRevocationKeepsCacheWarm: revoking one subject does not throw away
// the cached decisions of the others (revocations are checked outside the
// cache), while the revoked subject is denied at once.
func TestRevocationKeepsCacheWarm(t *testing.T) {
	h := newHarness(t, nil)
	other := checkReq("GET", "/queue", principal("spiffe://example.org/agent/support/a2"))
	h.check(t, other)
	h.store.Update(func(s *State) {
		s.Revocations, _ = revocation.NewSet([]revocation.Record{{
			ID: "r1", Kind: revocation.KindSubject, Value: "spiffe://example.org/agent/support/a1",
			Expires: h.clock.Now().Add(time.Hour),
		}})
	})
	if res := h.check(t, other); !res.allowed || !h.log.last().CacheHit {
		t.Fatalf("another subject's decision was not served from the cache after a revocation: %+v", h.log.last())
	}
	if res := h.check(t, checkReq("GET", "/queue")); res.allowed || res.reason != "revoked" {
		t.Fatalf("revoked subject: %+v", res)
	}
}

func TestRevocationBeatsFillRace(t *testing.T) {
	// A decision computed under epoch N that lands in the cache after the
	// state moved to N+1 must not be served.
	h := newHarness(t, nil)
	req := checkReq("GET", "/queue")
	st := h.store.Load()
	var k decisioncache.Key
	r := policies.Request{Subject: "spiffe://example.org/agent/support/a1", Destination: "spiffe://example.org/svc/tickets",
		Host: "tickets.internal", Method: "GET", Path: "/queue", Headers: req.Attributes.Request.Http.Headers}
	attrs.WriteKey(&k, st.PolicyEpoch, &r, &st.keySel)
	h.store.Update(func(s *State) {
		s.Policies = compile(t, `
apiVersion: mandate.dev/v1
kind: Policy
metadata: {name: empty}
spec:
  rules:
    - {name: other, effect: allow, subjects: ["spiffe://example.org/other"]}
`)
	})
	h.cache.Set(append([]byte(nil), k.Bytes()...), &decisioncache.Entry{Effect: uint8(policies.EffectAllow), Epoch: st.PolicyEpoch}, time.Time{}, h.clock.Now())
	h.cache.Wait()
	if res := h.check(t, req); res.allowed {
		t.Fatal("an allow filled under the old policy epoch was served after a policy change")
	}
}

func TestHeaderValuesReadByConditionsAreInTheKey(t *testing.T) {
	h := newHarness(t, nil)
	base := []reqOpt{hdr("x-mandate-intent", "support.read"), hdr("x-mandate-task", "T-1")}
	good := checkReq("GET", "/tickets/T-1", append(base, hdr("x-ticket", "T-1"))...)
	bad := checkReq("GET", "/tickets/T-1", append(base, hdr("x-ticket", "T-9"))...)
	if !h.check(t, good).allowed {
		t.Fatal("good denied")
	}
	if h.check(t, bad).allowed {
		t.Fatal("a cached allow was served for a different value of a header the condition reads")
	}
}

func TestStepUpApproval(t *testing.T) {
	var pending []StepUpRequest
	h := newHarness(t, func(c *Config) {
		c.OnStepUp = func(r StepUpRequest) { pending = append(pending, r) }
		c.ClaimApproval = func(context.Context, string) error { return nil }
	})
	req := checkReq("POST", "/refunds", principal("spiffe://example.org/agent/pay"), hdr("x-mandate-task", "T-7"))
	res := h.check(t, req)
	if res.status != 401 || res.approval == "" || len(pending) != 1 || pending[0].ID != res.approval {
		t.Fatalf("step-up: %+v pending %+v", res, pending)
	}
	if again := h.check(t, req); again.approval != res.approval {
		t.Fatalf("approval id changed between attempts: %q vs %q", res.approval, again.approval)
	}
	h.store.Update(func(s *State) {
		s.Approvals = NewApprovalSet([]Approval{{ID: res.approval, Subject: "spiffe://example.org/agent/pay", Task: "T-7",
			Method: "POST", Path: "/refunds", Policy: "guard", Rule: "refunds", Expires: h.clock.Now().Add(time.Minute)}})
	})
	if got := h.check(t, req); !got.allowed {
		t.Fatalf("approved request denied: %+v", got)
	}
	other := checkReq("POST", "/refunds", principal("spiffe://example.org/agent/pay"), hdr("x-mandate-task", "T-8"))
	if h.check(t, other).allowed {
		t.Fatal("approval for task T-7 allowed task T-8")
	}
	h.clock.Add(time.Minute)
	if h.check(t, req).allowed {
		t.Fatal("allowed after the approval window")
	}
}

// TestApprovalBoundToHeaderValuesAndUses is the attack of issue 10 item 5:
// an operator approves a refund of 600; refunds of 999999999999, of 1e99
// and with no amount must stay denied, and the 600 one is allowed exactly
// as many times as the control plane grants uses (here one), and never
// when the claim fails.
func TestApprovalBoundToHeaderValuesAndUses(t *testing.T) {
	var pending []StepUpRequest
	uses := map[string]int{} // what mandate-cp grants: one use per approval
	claimErr := error(nil)
	h := newHarness(t, func(c *Config) {
		c.OnStepUp = func(r StepUpRequest) { pending = append(pending, r) }
		c.ClaimApproval = func(_ context.Context, name string) error {
			if claimErr != nil {
				return claimErr
			}
			if uses[name] >= 1 {
				return errors.New("exhausted")
			}
			uses[name]++
			return nil
		}
	})
	h.store.Update(func(s *State) {
		s.Policies = compile(t, `apiVersion: mandate.dev/v1
kind: Policy
metadata: {name: guard}
spec:
  rules:
    - name: refunds
      effect: step_up
      subjects: ["spiffe://example.org/agent/pay"]
      actions: [{methods: [POST], paths: ["/refunds"]}]
      when: '!("x-refund-amount" in request.headers) || request.headers["x-refund-amount"] != "1"'
    - {name: pay, effect: allow, subjects: ["spiffe://example.org/agent/pay"], actions: [{methods: [POST], paths: ["/refunds"]}]}
`)
	})
	refund := func(amount string) *authv3.CheckRequest {
		opts := []reqOpt{principal("spiffe://example.org/agent/pay"), hdr("x-mandate-task", "T-7")}
		if amount != "" {
			opts = append(opts, hdr("x-refund-amount", amount))
		}
		return checkReq("POST", "/refunds", opts...)
	}
	res := h.check(t, refund("600"))
	if res.status != 401 || len(pending) != 1 || pending[0].ID != res.approval {
		t.Fatalf("step-up: %+v pending %+v", res, pending)
	}
	if got := pending[0].Headers; len(got) != 1 || got["x-refund-amount"] != "600" {
		t.Fatalf("step-up request does not show the amount read: %+v", got)
	}
	h.store.Update(func(s *State) {
		s.Approvals = NewApprovalSet([]Approval{{ID: res.approval, Subject: "spiffe://example.org/agent/pay", Task: "T-7",
			Method: "POST", Path: "/refunds", Policy: "guard", Rule: "refunds", Expires: h.clock.Now().Add(time.Minute)}})
	})
	for _, amount := range []string{"999999999999", "1e99", ""} {
		if got := h.check(t, refund(amount)); got.allowed || got.status != 401 || got.approval == res.approval {
			t.Fatalf("approval of a 600 refund covered amount %q: %+v", amount, got)
		}
	}
	claimErr = errors.New("control plane unreachable")
	if got := h.check(t, refund("600")); got.allowed {
		t.Fatal("allowed although the use claim failed")
	}
	claimErr = nil
	if got := h.check(t, refund("600")); !got.allowed {
		t.Fatalf("approved refund of 600 denied: %+v", got)
	}
	if got := h.check(t, refund("600")); got.allowed {
		t.Fatal("a one-use approval allowed a second refund")
	}
}

// TestApprovalNeverWidens: a step-up with no allow rule behind it stays
// denied even when approved.
func TestApprovalNeverWidens(t *testing.T) {
	h := newHarness(t, nil)
	h.store.Update(func(s *State) {
		s.Policies = compile(t, `apiVersion: mandate.dev/v1
kind: Policy
metadata: {name: guard}
spec:
  rules:
    - {name: refunds, effect: step_up, subjects: ["spiffe://example.org/agent/pay"], actions: [{methods: [POST], paths: ["/refunds"]}]}
`)
	})
	req := checkReq("POST", "/refunds", principal("spiffe://example.org/agent/pay"), hdr("x-mandate-task", "T-7"))
	res := h.check(t, req)
	h.store.Update(func(s *State) {
		s.Approvals = NewApprovalSet([]Approval{{ID: res.approval, Subject: "spiffe://example.org/agent/pay", Task: "T-7",
			Method: "POST", Path: "/refunds", Policy: "guard", Rule: "refunds", Expires: h.clock.Now().Add(time.Minute)}})
	})
	if got := h.check(t, req); got.allowed || got.status != 401 {
		t.Fatalf("approval allowed a request no allow rule covers: %+v", got)
	}
}

type panicky struct{}

func (panicky) Stale() bool { panic("boom") }

func (panicky) Log(decisionlog.Record) { panic("boom") }

func TestPanicIsDeny(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
	}{
		{"in decide", func(c *Config) { c.Staleness = panicky{} }},
		// finish runs again after the recover: a second panic must not
		// escape Check, and an allow already computed must become a deny.
		{"in the decision logger", func(c *Config) { c.Log = panicky{} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.mutate)
			res := h.check(t, checkReq("GET", "/queue"))
			if res.allowed || res.reason != "internal_error" {
				t.Fatalf("panic gave %+v", res)
			}
		})
	}
}

type staleFlag bool

func (s staleFlag) Stale() bool { return bool(s) }

func TestStaleness(t *testing.T) {
	all := newHarness(t, func(c *Config) { c.Staleness = staleFlag(true) })
	if res := all.check(t, checkReq("GET", "/queue")); res.allowed || res.reason != "stale_state" {
		t.Fatalf("stale deny-all: %+v", res)
	}
	sens := newHarness(t, func(c *Config) { c.Staleness = staleFlag(true); c.StaleMode = StaleDenySensitive })
	if res := sens.check(t, checkReq("GET", "/queue", labels("sensitivity", "low"))); !res.allowed {
		t.Fatalf("stale sensitive-mode denied a low route: %+v", res)
	}
	if res := sens.check(t, checkReq("GET", "/queue", labels("sensitivity", "high"))); res.allowed || res.reason != "stale_state" {
		t.Fatalf("stale sensitive-mode allowed a high route: %+v", res)
	}
}

func TestNotReady(t *testing.T) {
	h := newHarness(t, nil)
	h.store = NewStateStore(nil)
	h.srv.cfg.State = h.store
	if res := h.check(t, checkReq("GET", "/queue")); res.allowed || res.reason != "not_ready" {
		t.Fatalf("no state: %+v", res)
	}
}

func TestMalformedRequests(t *testing.T) {
	h := newHarness(t, nil)
	for name, req := range map[string]*authv3.CheckRequest{
		"nil attributes": {},
		"no http":        {Attributes: &authv3.AttributeContext{Source: &authv3.AttributeContext_Peer{Principal: "spiffe://example.org/agent/support/a1"}}},
		"nil source":     {Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/queue"}}}},
	} {
		t.Run(name, func(t *testing.T) {
			if res := h.check(t, req); res.allowed {
				t.Fatal("malformed request allowed")
			}
		})
	}
}

// TestOverGRPC runs the server on a real listener: a deny is an RPC OK.
func TestOverGRPC(t *testing.T) {
	h := newHarness(t, nil)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	authv3.RegisterAuthorizationServer(gs, h.srv)
	go func() { _ = gs.Serve(lis) }()
	defer gs.Stop()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := authv3.NewAuthorizationClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.Check(ctx, checkReq("GET", "/secrets/x"))
	if err != nil {
		t.Fatalf("deny came back as an RPC error: %v", err)
	}
	if resp.GetStatus().GetCode() != int32(codes.PermissionDenied) {
		t.Fatalf("status %v", resp.GetStatus())
	}
	resp, err = c.Check(ctx, checkReq("GET", "/queue"))
	if err != nil || resp.GetStatus().GetCode() != int32(codes.OK) {
		t.Fatalf("allow: %v %v", resp, err)
	}
}
