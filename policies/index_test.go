package policies

import (
	"fmt"
	"math/rand"
	"strings"
	"testing"
)

// naiveEvaluate is the reference semantics: scan every rule.
func naiveEvaluate(s *Set, r *Request) (Effect, Reason, string, string, string) {
	type hit struct {
		ru  *rule
		err bool
	}
	var enforce, dry []hit
	for i := range s.rules {
		ru := &s.rules[i]
		if !ru.matchStatic(r) {
			continue
		}
		ok, err := true, error(nil)
		if ru.cond != nil {
			ok, err = ru.cond.eval(r)
		}
		if err == nil && !ok {
			continue
		}
		if ru.dryRun {
			dry = append(dry, hit{ru, err != nil})
		} else {
			enforce = append(enforce, hit{ru, err != nil})
		}
	}
	// first returns the load-order-first hit satisfying f.
	first := func(hs []hit, f func(hit) bool) *hit {
		var best *hit
		for i := range hs {
			if f(hs[i]) && (best == nil || hs[i].ru.order < best.ru.order) {
				best = &hs[i]
			}
		}
		return best
	}
	// Dry run mirrors enforcement: deny rules (matched or failed) first,
	// then failed step_up rules (reported as deny), step_up, allow.
	dryStr := ""
	if h := first(dry, func(h hit) bool { return h.ru.effect == EffectDeny }); h != nil {
		dryStr = "deny/" + h.ru.name
	} else if h := first(dry, func(h hit) bool { return h.ru.effect == EffectStepUp && h.err }); h != nil {
		dryStr = "deny/" + h.ru.name
	} else if h := first(dry, func(h hit) bool { return h.ru.effect == EffectStepUp }); h != nil {
		dryStr = "step_up/" + h.ru.name
	} else if h := first(dry, func(h hit) bool { return h.ru.effect == EffectAllow && !h.err }); h != nil {
		dryStr = "allow/" + h.ru.name
	}
	if h := first(enforce, func(h hit) bool { return h.ru.effect == EffectDeny }); h != nil {
		reason := ReasonDeniedByRule
		if h.err {
			reason = ReasonConditionError
		}
		return EffectDeny, reason, h.ru.policy + "/" + h.ru.name, dryStr, ""
	}
	if h := first(enforce, func(h hit) bool { return h.ru.effect == EffectStepUp && h.err }); h != nil {
		return EffectDeny, ReasonConditionError, h.ru.policy + "/" + h.ru.name, dryStr, ""
	}
	if h := first(enforce, func(h hit) bool { return h.ru.effect == EffectStepUp }); h != nil {
		return EffectStepUp, ReasonStepUpRequired, h.ru.policy + "/" + h.ru.name, dryStr, ""
	}
	if h := first(enforce, func(h hit) bool { return h.ru.effect == EffectAllow && !h.err }); h != nil {
		return EffectAllow, ReasonAllowed, h.ru.policy + "/" + h.ru.name, dryStr, ""
	}
	if h := first(enforce, func(h hit) bool { return h.err }); h != nil {
		return EffectDeny, ReasonConditionError, h.ru.policy + "/" + h.ru.name, dryStr, ""
	}
	return EffectDeny, ReasonNoMatch, "/", dryStr, ""
}

// TestIndexMatchesNaiveScan is a property test: for random rule sets and
// requests, the indexed Evaluate agrees with a scan over every rule.
func TestIndexMatchesNaiveScan(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	segs := []string{"a", "b", "c", "ab"}
	pick := func(xs []string) string { return xs[rng.Intn(len(xs))] }
	idPattern := func() string {
		n := 1 + rng.Intn(3)
		parts := []string{"spiffe://example.org"}
		for i := 0; i < n; i++ {
			switch rng.Intn(6) {
			case 0:
				parts = append(parts, "*")
			case 1:
				parts = append(parts, "a*")
			default:
				parts = append(parts, pick(segs))
			}
		}
		if rng.Intn(4) == 0 {
			parts = append(parts, "**")
		}
		return strings.Join(parts, "/")
	}
	id := func() string {
		n := rng.Intn(4)
		parts := []string{"spiffe://" + pick([]string{"example.org", "other.org"})}
		for i := 0; i < n; i++ {
			parts = append(parts, pick(segs))
		}
		return strings.Join(parts, "/")
	}
	conds := []string{"", "", "", `request.headers["x"] == "1"`, `int(request.headers["x"]) > 0`, `task == "t"`}
	for iter := 0; iter < 60; iter++ {
		var docs []string
		nPol := 1 + rng.Intn(4)
		for p := 0; p < nPol; p++ {
			var b strings.Builder
			fmt.Fprintf(&b, "%smetadata: {name: p%d}\nspec:\n", header, p)
			if rng.Intn(3) == 0 {
				b.WriteString("  mode: dry_run\n")
			}
			b.WriteString("  rules:\n")
			for r := 0; r < 1+rng.Intn(8); r++ {
				fmt.Fprintf(&b, "    - name: r%d\n      effect: %s\n      subjects: [%q", r, pick([]string{"allow", "deny", "step_up", "allow"}), idPattern())
				if rng.Intn(3) == 0 {
					fmt.Fprintf(&b, ", %q", idPattern())
				}
				b.WriteString("]\n")
				if rng.Intn(3) == 0 {
					fmt.Fprintf(&b, "      actions: [{methods: [%s]}]\n", pick([]string{"GET", "POST"}))
				}
				if rng.Intn(4) == 0 {
					b.WriteString("      intents: [i1]\n")
				}
				if c := pick(conds); c != "" {
					fmt.Fprintf(&b, "      when: '%s'\n", c)
				}
			}
			docs = append(docs, b.String())
		}
		set := mustSet(t, docs...)
		for q := 0; q < 200; q++ {
			r := &Request{Subject: id(), Method: pick([]string{"GET", "POST"}), Path: "/"}
			if rng.Intn(2) == 0 {
				r.Intent = "i1"
			}
			if rng.Intn(2) == 0 {
				r.Task = "t"
			}
			if v := rng.Intn(3); v > 0 {
				r.Headers = map[string]string{"x": fmt.Sprint(v - 1)}
			}
			d := set.Evaluate(r)
			dry := ""
			if d.DryRun != nil {
				dry = d.DryRun.Effect.String() + "/" + d.DryRun.Rule
			}
			eff, reason, who, wantDry, _ := naiveEvaluate(set, r)
			if d.Effect != eff || d.Reason != reason || d.Policy+"/"+d.Rule != who || dry != wantDry {
				t.Fatalf("iteration %d, request %+v:\nindexed %v %v %s/%s dry=%s\nnaive   %v %v %s dry=%s\npolicies:\n%s",
					iter, r, d.Effect, d.Reason, d.Policy, d.Rule, dry, eff, reason, who, wantDry, strings.Join(docs, "---\n"))
			}
		}
	}
}

// TestIndexNarrowsCandidates checks the index is used: a subject sees
// only the rules filed under its own path.
func TestIndexNarrowsCandidates(t *testing.T) {
	set := manyRules(t, 1000, false)
	var buf [32]int32
	c := set.root.candidates("spiffe://example.org/agent/n500/x", buf[:0])
	if len(c) != 1 {
		t.Fatalf("%d candidates for one subject, want 1", len(c))
	}
	if set.rules[c[0]].name != "r" || set.rules[c[0]].policy != "p500" {
		t.Fatalf("candidate is %s/%s", set.rules[c[0]].policy, set.rules[c[0]].name)
	}
}
