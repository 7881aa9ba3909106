package policies

import (
	"strings"
	"testing"
)

func TestHeaderAnalysis(t *testing.T) {
	tests := []struct {
		when    string
		keys    string
		all     bool
		usesNow bool
	}{
		{`request.headers["x-a"] == "1"`, "x-a", false, false},
		{`request.headers.x_b == "1"`, "x_b", false, false},
		{`has(request.headers.x_c)`, "x_c", false, false},
		{`"x-d" in request.headers && request.headers["x-e"] != ""`, "x-d,x-e", false, false},
		{`request.headers.exists(k, k.startsWith("x-"))`, "", true, false},
		{`request.headers[task] == "1"`, "", true, false},
		{`size(request.headers) > 2`, "", true, false},
		{`request.headers == {"a": "b"}`, "", true, false},
		{`task == "t" && request.method == "GET"`, "", false, false},
		{`now > timestamp("2020-01-01T00:00:00Z")`, "", false, true},
		{`[1].exists(now, now > 0)`, "", true, true},
		{`labels["x-a"] == "1"`, "", false, false},
	}
	env, err := newCELEnv()
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		c, err := compileCondition(env, tt.when)
		if err != nil {
			t.Errorf("%s: %v", tt.when, err)
			continue
		}
		if got := strings.Join(c.headerKeys, ","); got != tt.keys || c.allHeaders != tt.all || c.usesNow != tt.usesNow {
			t.Errorf("%s: keys %q all %v now %v, want %q %v %v", tt.when, got, c.allHeaders, c.usesNow, tt.keys, tt.all, tt.usesNow)
		}
	}
}

func TestSetHeaderKeys(t *testing.T) {
	set := mustSet(t, header+`metadata: {name: p}
spec:
  rules:
    - {name: a, effect: allow, subjects: ["spiffe://example.org/a"], when: 'request.headers["x-b"] == "1"'}
    - {name: b, effect: deny, subjects: ["spiffe://example.org/a"], when: 'has(request.headers.x_a) || request.headers["x-b"] == "2"'}
`)
	if got := strings.Join(set.HeaderKeys(), ","); got != "x-b,x_a" {
		t.Errorf("HeaderKeys = %q", got)
	}
	if set.ReadsAllHeaders() {
		t.Error("ReadsAllHeaders without a dynamic read")
	}
	set = mustSet(t, header+`metadata: {name: p}
spec:
  mode: dry_run
  rules:
    - {name: a, effect: allow, subjects: ["spiffe://example.org/a"], when: 'request.headers.all(k, k != "")'}
`)
	if !set.ReadsAllHeaders() {
		t.Error("dynamic header read in a dry-run rule not reported")
	}
}

// TestConditionValueViews exercises the lazy CEL views beyond lookups:
// iteration, equality, size and conversion.
func TestConditionValueViews(t *testing.T) {
	set := mustSet(t, header+`metadata: {name: p}
spec:
  rules:
    - name: a
      effect: allow
      subjects: ["spiffe://example.org/a"]
      when: >-
        request.headers.exists(k, k == "x-a") && size(request.headers) == 2 &&
        request.headers == {"x-a": "1", "x-b": "2"} && labels.all(k, labels[k] == "v") &&
        mandate.size() == 5 && mandate["task"] == "T" && "chain" in mandate &&
        mandate.exists(k, k == "issuer") && !("nope" in mandate) && type(mandate) == map &&
        string(request.headers["x-a"]) == "1"
`)
	r := &Request{Subject: "spiffe://example.org/a", Headers: map[string]string{"x-a": "1", "x-b": "2"},
		Labels: map[string]string{"l": "v"}, Mandate: &Mandate{ID: "m", Task: "T"}}
	if d := set.Evaluate(r); d.Effect != EffectAllow {
		t.Fatalf("decision %+v", d)
	}
	r.Headers["x-c"] = "3"
	if d := set.Evaluate(r); d.Effect != EffectDeny {
		t.Fatalf("decision with an extra header %+v", d)
	}
}
