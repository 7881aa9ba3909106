package authz

import (
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestCountersOf: the remembered counters are the vectors' own children
// for the same labels, and no more than maxOutcomes label sets are kept.
func TestCountersOf(t *testing.T) {
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		c := m.countersOf("p", "r", "allow", "allowed")
		if c.decisions != m.decisions.WithLabelValues("allow", "allowed") || c.ruleHits != m.ruleHits.WithLabelValues("p", "r", "allow") {
			t.Fatal("remembered counters are not the vectors' children")
		}
	}
	if c := m.countersOf("", "", "deny", "no_match"); c.ruleHits != nil {
		t.Fatal("a decision without a rule has a rule counter")
	}
	for i := range maxOutcomes + 10 {
		m.countersOf("p", "r"+strconv.Itoa(i), "deny", "denied_by_rule")
	}
	if n := m.nOutcomes.Load(); n != maxOutcomes {
		t.Fatalf("%d label sets remembered, want %d", n, maxOutcomes)
	}
	c := m.countersOf("p", "late", "deny", "denied_by_rule")
	if c.ruleHits != m.ruleHits.WithLabelValues("p", "late", "deny") {
		t.Fatal("past the bound, countersOf does not return the vector's child")
	}
}
