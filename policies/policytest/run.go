package policytest

import (
	"fmt"
	"strings"

	"github.com/mandate-dev/mandate/policies"
)

// Result is the outcome of one case.
type Result struct {
	File  string
	Suite string
	Case  string
	Pass  bool
	// Message says, on failure, what was expected and what was decided.
	Message  string
	Decision policies.Decision
}

// Report holds the results of a run, in suite and case order.
type Report struct {
	Results []Result
	Passed  int
	Failed  int
}

// OK reports whether every case passed.
func (r Report) OK() bool { return r.Failed == 0 }

// Run evaluates every case of suites against set, each request going
// through the replica's extraction first (see Request.Build).
func Run(set *policies.Set, suites []*Suite) Report {
	var rep Report
	x, err := extractor(suites)
	for _, s := range suites {
		for i := range s.Cases {
			c := &s.Cases[i]
			var d policies.Decision
			if err != nil {
				d = *refused("internal_error")
			} else if r, refusal := c.Request.Build(x); refusal != nil {
				d = *refusal
			} else {
				d = set.Evaluate(r)
			}
			res := Result{File: s.File, Suite: s.Metadata.Name, Case: c.Name, Decision: d}
			if diffs := compare(c.Expect, d); len(diffs) > 0 {
				res.Message = fmt.Sprintf("expected %s; got %s (%s)", describeExpect(c.Expect), describe(d), strings.Join(diffs, ", "))
				rep.Failed++
			} else {
				res.Pass = true
				rep.Passed++
			}
			rep.Results = append(rep.Results, res)
		}
	}
	return rep
}

// compare lists the fields where d differs from e.
func compare(e Expect, d policies.Decision) []string {
	var diffs []string
	if d.Effect.String() != e.Effect {
		diffs = append(diffs, "effect differs")
	}
	if e.Policy != "" && d.Policy != e.Policy {
		diffs = append(diffs, "policy differs")
	}
	if e.Rule != "" && d.Rule != e.Rule {
		diffs = append(diffs, "rule differs")
	}
	if e.Reason != "" && string(d.Reason) != e.Reason {
		diffs = append(diffs, "reason differs")
	}
	if dr := e.DryRun; dr != nil {
		switch {
		case dr.Effect == "none":
			if d.DryRun != nil {
				diffs = append(diffs, "unexpected dry-run match")
			}
		case d.DryRun == nil:
			diffs = append(diffs, "no dry-run match")
		default:
			if d.DryRun.Effect.String() != dr.Effect ||
				(dr.Policy != "" && d.DryRun.Policy != dr.Policy) ||
				(dr.Rule != "" && d.DryRun.Rule != dr.Rule) {
				diffs = append(diffs, "dry-run match differs")
			}
		}
	}
	return diffs
}

func describeExpect(e Expect) string {
	var b strings.Builder
	b.WriteString("effect=" + e.Effect)
	if e.Policy != "" {
		b.WriteString(" policy=" + e.Policy)
	}
	if e.Rule != "" {
		b.WriteString(" rule=" + e.Rule)
	}
	if e.Reason != "" {
		b.WriteString(" reason=" + e.Reason)
	}
	if dr := e.DryRun; dr != nil {
		fmt.Fprintf(&b, " dryRun=%s", dr.Effect)
		if dr.Policy != "" || dr.Rule != "" {
			fmt.Fprintf(&b, "(%s/%s)", dr.Policy, dr.Rule)
		}
	}
	return b.String()
}

func describe(d policies.Decision) string {
	s := fmt.Sprintf("effect=%s reason=%s", d.Effect, d.Reason)
	if d.Policy != "" || d.Rule != "" {
		s += fmt.Sprintf(" policy=%s rule=%s", d.Policy, d.Rule)
	}
	if d.DryRun != nil {
		s += fmt.Sprintf(" dryRun=%s(%s/%s)", d.DryRun.Effect, d.DryRun.Policy, d.DryRun.Rule)
	} else {
		s += " dryRun=none"
	}
	return s
}
