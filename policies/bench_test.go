package policies

import (
	"fmt"
	"testing"
	"time"
)

// manyRules builds n policies of one rule each, every rule for a
// different subject prefix.
func manyRules(tb testing.TB, n int, withCEL bool) *Set {
	tb.Helper()
	ps := make([]*Policy, n)
	for i := range ps {
		ru := Rule{
			Name:         "r",
			Effect:       "allow",
			Subjects:     []string{fmt.Sprintf("spiffe://example.org/agent/n%d/*", i)},
			Destinations: []string{"spiffe://example.org/svc/tickets"},
			Intents:      []string{"support.read"},
			Actions:      []Action{{Methods: []string{"GET", "HEAD"}, Paths: []string{"/tickets/**"}}},
		}
		if withCEL {
			ru.When = `request.headers["x-ticket-id"].startsWith(task)`
		}
		ps[i] = &Policy{APIVersion: APIVersion, Kind: KindPolicy,
			Metadata: Metadata{Name: fmt.Sprintf("p%d", i)}, Spec: Spec{Rules: []Rule{ru}}}
	}
	s, err := Compile(ps)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func BenchmarkEvaluate(b *testing.B) {
	for _, withCEL := range []bool{false, true} {
		for _, n := range []int{10, 10000} {
			name := fmt.Sprintf("rules=%d", n)
			if withCEL {
				name += "/cel"
			}
			b.Run(name, func(b *testing.B) {
				set := manyRules(b, n, withCEL)
				r := &Request{
					Subject:     fmt.Sprintf("spiffe://example.org/agent/n%d/a1", n/2),
					Destination: "spiffe://example.org/svc/tickets",
					Method:      "GET",
					Path:        "/tickets/T-1",
					Intent:      "support.read",
					Task:        "T-1",
					Headers:     map[string]string{"x-ticket-id": "T-1", "user-agent": "agent/1"},
					Now:         time.Now(),
				}
				if d := set.Evaluate(r); d.Effect != EffectAllow {
					b.Fatalf("decision %+v", d)
				}
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					set.Evaluate(r)
				}
			})
		}
	}
}
