package examples

import (
	"testing"

	"github.com/mandate-dev/mandate/policies"
	"github.com/mandate-dev/mandate/policies/policytest"
)

// TestEmbeddedMatchesDirectory: the embedded set is the directory's set,
// and its cases pass.
func TestEmbeddedMatchesDirectory(t *testing.T) {
	embedded, err := policies.LoadFS(FS)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := policies.LoadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	if embedded.Version() != dir.Version() || embedded.Len() != dir.Len() || embedded.Len() == 0 {
		t.Fatalf("embedded set %s (%d rules) differs from the directory's %s (%d rules)",
			embedded.Version(), embedded.Len(), dir.Version(), dir.Len())
	}
	suites, err := policytest.LoadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	if rep := policytest.Run(embedded, suites); !rep.OK() || rep.Passed == 0 {
		t.Fatalf("example cases against the embedded set: %d passed, %d failed", rep.Passed, rep.Failed)
	}
}
