package authz

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestCacheHitsShareMemoCorrectly: the hits of a cached decision share its
// metric handles and task header (hitMemo); each response still carries
// its own decision id and its own task, every hit is counted under the
// labels of what it decided, and an approved step-up (a hit of a step_up
// entry turned into an allow) is counted as the allow it became.
func TestCacheHitsShareMemoCorrectly(t *testing.T) {
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, func(c *Config) {
		c.Metrics = m
		c.ClaimApproval = func(context.Context, string) error { return nil }
	})
	ids := map[string]bool{}
	for i := 0; i < 3; i++ {
		for _, task := range []string{"T-1", "T-2"} {
			res := h.check(t, checkReq("GET", "/queue", hdr("x-mandate-task", task)))
			if !res.allowed {
				t.Fatalf("denied: %+v", res)
			}
			got := map[string]string{}
			for _, hv := range res.resp.GetOkResponse().GetHeaders() {
				got[hv.GetHeader().GetKey()] = hv.GetHeader().GetValue()
			}
			if got[HeaderTask] != task {
				t.Fatalf("pass %d: task header %q, want %q", i, got[HeaderTask], task)
			}
			if id := got[HeaderDecisionID]; id == "" || ids[id] {
				t.Fatalf("pass %d: decision id %q empty or repeated", i, id)
			}
			ids[got[HeaderDecisionID]] = true
		}
	}
	reason := h.log.last().Reason
	if n := testutil.ToFloat64(m.decisions.WithLabelValues("allow", reason)); n != 6 {
		t.Fatalf("decisions{allow,%q} = %v, want 6", reason, n)
	}
	if n := testutil.ToFloat64(m.ruleHits.WithLabelValues("tickets", "list", "allow")); n != 6 {
		t.Fatalf("rule decisions{tickets,list,allow} = %v, want 6", n)
	}
	if n := testutil.ToFloat64(m.cacheHits); n != 4 {
		t.Fatalf("cache hits = %v, want 4", n)
	}

	req := checkReq("POST", "/refunds", principal("spiffe://example.org/agent/pay"), hdr("x-mandate-task", "T-7"))
	res := h.check(t, req)
	if again := h.check(t, req); again.status != 401 || res.status != 401 {
		t.Fatalf("step-up: %+v, %+v", res, again)
	}
	h.store.Update(func(s *State) {
		s.Approvals = NewApprovalSet([]Approval{{ID: res.approval, Subject: "spiffe://example.org/agent/pay", Task: "T-7",
			Method: "POST", Path: "/refunds", Policy: "guard", Rule: "refunds", Expires: h.clock.Now().Add(time.Minute)}})
	})
	for i := 0; i < 2; i++ {
		got := h.check(t, req)
		if !got.allowed {
			t.Fatalf("approved request denied: %+v", got)
		}
		var task string
		for _, hv := range got.resp.GetOkResponse().GetHeaders() {
			if hv.GetHeader().GetKey() == HeaderTask {
				task = hv.GetHeader().GetValue()
			}
		}
		if task != "T-7" {
			t.Fatalf("approved allow carries task %q, want T-7", task)
		}
	}
	for _, c := range []struct {
		result, reason, rule string
		want                 float64
	}{
		{"step_up", "step_up_required", "refunds", 2},
		{"allow", reasonApproved, "refunds", 2},
	} {
		if n := testutil.ToFloat64(m.decisions.WithLabelValues(c.result, c.reason)); n != c.want {
			t.Errorf("decisions{%s,%s} = %v, want %v", c.result, c.reason, n, c.want)
		}
		if n := testutil.ToFloat64(m.ruleHits.WithLabelValues("guard", c.rule, c.result)); n != c.want {
			t.Errorf("rule decisions{guard,%s,%s} = %v, want %v", c.rule, c.result, n, c.want)
		}
	}
}
