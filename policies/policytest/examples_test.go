package policytest_test

import (
	"testing"

	"github.com/mandate-dev/mandate/policies"
	"github.com/mandate-dev/mandate/policies/policytest"
)

// TestExamples runs the example policy sets' own test suites.
func TestExamples(t *testing.T) {
	set, err := policies.LoadDir("../examples")
	if err != nil {
		t.Fatal(err)
	}
	suites, err := policytest.LoadDir("../examples")
	if err != nil {
		t.Fatal(err)
	}
	if len(suites) < 4 {
		t.Fatalf("loaded %d suites, want at least 4", len(suites))
	}
	rep := policytest.Run(set, suites)
	for _, r := range rep.Results {
		if !r.Pass {
			t.Errorf("%s: %s: %s: %s", r.File, r.Suite, r.Case, r.Message)
		}
	}
	if rep.Passed == 0 || !rep.OK() {
		t.Fatalf("passed %d, failed %d", rep.Passed, rep.Failed)
	}
}
