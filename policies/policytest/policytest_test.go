package policytest

import (
	"strings"
	"testing"

	"github.com/mandate-dev/mandate/policies"
)

const policy = `apiVersion: mandate.dev/v1
kind: Policy
metadata: {name: p}
spec:
  rules:
    - {name: read, effect: allow, subjects: ["spiffe://example.org/a"], actions: [{methods: [GET]}], when: 'request.headers["x-k"] == task'}
    - {name: admin, effect: deny, subjects: ["spiffe://example.org/a"], actions: [{grpc: ["a.v1.Admin/*"]}]}
`

func TestRunReportsMismatch(t *testing.T) {
	ps, err := policies.Parse("p.yaml", []byte(policy))
	if err != nil {
		t.Fatal(err)
	}
	set, err := policies.Compile(ps)
	if err != nil {
		t.Fatal(err)
	}
	suites, err := Parse("p_test.yaml", []byte(`apiVersion: mandate.dev/v1
kind: PolicyTest
metadata: {name: s}
cases:
  - name: ok
    request: {subject: "spiffe://example.org/a", method: GET, task: T, headers: {X-K: T}}
    expect: {effect: allow, policy: p, rule: read, reason: allowed, dryRun: {effect: none}}
  - name: grpc deny
    request: {subject: "spiffe://example.org/a", grpc: a.v1.Admin/Drop}
    expect: {effect: deny, rule: admin}
  - name: wrong
    request: {subject: "spiffe://example.org/a", method: GET, task: T, headers: {x-k: U}}
    expect: {effect: allow, rule: read}
  - name: wrong rule
    request: {subject: "spiffe://example.org/a", grpc: a.v1.Admin/Drop}
    expect: {effect: deny, rule: read}
`))
	if err != nil {
		t.Fatal(err)
	}
	rep := Run(set, suites)
	if rep.Passed != 2 || rep.Failed != 2 || rep.OK() {
		t.Fatalf("passed %d failed %d", rep.Passed, rep.Failed)
	}
	msg := rep.Results[2].Message
	for _, w := range []string{"expected effect=allow rule=read", "got effect=deny reason=no_matching_rule", "effect differs"} {
		if !strings.Contains(msg, w) {
			t.Errorf("message %q lacks %q", msg, w)
		}
	}
	if m := rep.Results[3].Message; !strings.Contains(m, "rule differs") || strings.Contains(m, "effect differs") {
		t.Errorf("message %q", m)
	}
	if rep.Results[0].Case != "ok" || rep.Results[0].File != "p_test.yaml" || rep.Results[0].Suite != "s" {
		t.Errorf("result 0 = %+v", rep.Results[0])
	}
}

func TestParseErrors(t *testing.T) {
	const head = "apiVersion: mandate.dev/v1\nkind: PolicyTest\nmetadata: {name: s}\n"
	tests := []struct {
		name, doc, want string
	}{
		{"unknown field", head + "cases: [{name: c, request: {subject: x, verb: GET}, expect: {effect: allow}}]\n", "t.yaml:4:41: field verb not found"},
		{"bad effect", head + "cases: [{name: c, request: {subject: x}, expect: {effect: permit}}]\n", `t.yaml: suite "s": case "c": expect.effect: must be allow, deny or step_up`},
		{"duplicate case", head + "cases: [{name: c, expect: {effect: allow}}, {name: c, expect: {effect: deny}}]\n", `case "c": name: duplicate case name`},
		{"no name", head + "cases: [{expect: {effect: allow}}]\n", `case "#0": name: required`},
		{"bad grpc", head + "cases: [{name: c, request: {grpc: nope}, expect: {effect: allow}}]\n", `case "c": request.grpc: "nope" must be pkg.Service/Method`},
		{"bad dry run", head + "cases: [{name: c, expect: {effect: allow, dryRun: {effect: maybe}}}]\n", `case "c": expect.dryRun.effect`},
		{"wrong kind", "apiVersion: mandate.dev/v1\nkind: Policy\nmetadata: {name: s}\ncases: [{name: c, expect: {effect: allow}}]\n", `suite "s": kind: must be "PolicyTest"`},
		{"no cases", head, `suite "s": cases: a suite needs at least one case`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("t.yaml", []byte(tt.doc))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v\nwant it to contain %q", err, tt.want)
			}
		})
	}
}

func TestBuild(t *testing.T) {
	r := Request{Subject: "s", Host: "API.Internal", GRPC: "a.v1.S/M", Headers: map[string]string{"X-A": "1"},
		Mandate: &Mandate{ID: "m", Task: "T", Intent: "I", Chain: []string{"c"}}}
	x, err := extractor([]*Suite{{Cases: []Case{{Request: Request{Subject: "spiffe://example.org/a"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	r.Subject = "spiffe://example.org/a"
	got, refusal := r.Build(x)
	if refusal != nil {
		t.Fatalf("refused: %+v", refusal)
	}
	if got.Host != "api.internal" || got.GRPCService != "a.v1.S" || got.GRPCMethod != "M" || got.Path != "/a.v1.S/M" ||
		got.Method != "POST" || got.Headers["x-a"] != "1" || got.Task != "T" || got.Intent != "I" ||
		got.Mandate == nil || got.Mandate.ID != "m" || !got.Now.Equal(DefaultNow) {
		t.Fatalf("Build = %+v", got)
	}
}
