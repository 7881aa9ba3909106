package policies

import (
	"strings"

	"github.com/mandate-dev/mandate/policies/pattern"
)

// Evaluate decides a request. Among the enforce-mode rules that match:
// any deny gives Deny (ReasonDeniedByRule), else any step_up gives StepUp
// (ReasonStepUpRequired), else any allow gives Allow (ReasonAllowed),
// else Deny (ReasonNoMatch). The deciding rule is the first in load order
// among the rules of the winning effect.
//
// Conditions fail closed: an evaluation error in a deny or step_up rule's
// condition makes the decision Deny with ReasonConditionError (naming that
// rule); in an allow rule's condition it makes that rule not match, and
// if no other rule allows, the decision is Deny with ReasonConditionError.
//
// Dry-run rules never change Effect: the strongest dry-run match is
// reported in DryRun (a dry-run deny or step_up rule whose condition
// fails is reported as a dry-run deny).
//
// Evaluate never panics on any Request; a nil Request is denied.
func (s *Set) Evaluate(r *Request) Decision {
	if s == nil || len(s.rules) == 0 || r == nil {
		return Decision{Effect: EffectDeny, Reason: ReasonNoPolicy, Cacheable: r != nil}
	}
	var arr [32]int32
	cands := s.root.candidates(r.Subject, arr[:0])
	d := Decision{Effect: EffectDeny, Reason: ReasonNoMatch, Cacheable: true}
	var allowErr *rule
	i := 0
	for ; i < len(cands) && int(cands[i]) < s.firstDry; i++ {
		ru := &s.rules[cands[i]]
		if !ru.matchStatic(r) {
			continue
		}
		ok, err := ru.evalCond(r, &d)
		if err != nil {
			if ru.effect == EffectAllow {
				if allowErr == nil {
					allowErr = ru
				}
				continue
			}
			d.Effect, d.Reason, d.Policy, d.Rule = EffectDeny, ReasonConditionError, ru.policy, ru.name
			break
		}
		if !ok {
			continue
		}
		d.Effect, d.Policy, d.Rule = ru.effect, ru.policy, ru.name
		switch ru.effect {
		case EffectAllow:
			d.Reason = ReasonAllowed
		case EffectStepUp:
			d.Reason = ReasonStepUpRequired
		default:
			d.Reason = ReasonDeniedByRule
		}
		break
	}
	if d.Reason == ReasonNoMatch && allowErr != nil {
		d.Reason, d.Policy, d.Rule = ReasonConditionError, allowErr.policy, allowErr.name
	}
	for ; i < len(cands); i++ {
		if int(cands[i]) < s.firstDry {
			continue
		}
		ru := &s.rules[cands[i]]
		if !ru.matchStatic(r) {
			continue
		}
		ok, err := ru.evalCond(r, &d)
		if err != nil {
			if ru.effect == EffectAllow {
				continue
			}
			d.DryRun = &Match{Policy: ru.policy, Rule: ru.name, Effect: EffectDeny}
			break
		}
		if ok {
			d.DryRun = &Match{Policy: ru.policy, Rule: ru.name, Effect: ru.effect}
			break
		}
	}
	return d
}

// evalCond evaluates the rule's condition (true without one) and marks
// the decision uncacheable when the condition reads the clock.
func (ru *rule) evalCond(r *Request, d *Decision) (ok bool, err error) {
	if ru.cond == nil {
		return true, nil
	}
	if ru.cond.usesNow {
		d.Cacheable = false
	}
	return ru.cond.eval(r)
}

// matchStatic checks every matcher of the rule except its condition.
func (ru *rule) matchStatic(r *Request) bool {
	if !matchAny(ru.subjects, r.Subject) {
		return false
	}
	if ru.requireMandate && r.Mandate == nil {
		return false
	}
	if len(ru.intents) > 0 && (r.Intent == "" || !containsString(ru.intents, r.Intent)) {
		return false
	}
	if (len(ru.hosts) > 0 || len(ru.hostSuffixes) > 0) && !ru.matchHost(r.Host) {
		return false
	}
	if len(ru.dests) > 0 && !matchAny(ru.dests, r.Destination) {
		return false
	}
	for _, l := range ru.labels {
		if v, ok := r.Labels[l.key]; !ok || v != l.value {
			return false
		}
	}
	if len(ru.actions) > 0 {
		matched := false
		for i := range ru.actions {
			if ru.actions[i].match(r) {
				matched = true
				break
			}
		}
		if !matched {
			return false
		}
	}
	return true
}

func (ru *rule) matchHost(host string) bool {
	host = stripPort(host)
	if host == "" {
		return false
	}
	for _, h := range ru.hosts {
		if strings.EqualFold(h, host) {
			return true
		}
	}
	for _, suffix := range ru.hostSuffixes {
		if len(host) > len(suffix) && strings.EqualFold(host[len(host)-len(suffix):], suffix) {
			return true
		}
	}
	return false
}

// stripPort removes a ":port" suffix from an authority.
func stripPort(h string) string {
	i := strings.LastIndexByte(h, ':')
	if i < 0 || strings.IndexByte(h[i:], ']') >= 0 {
		return h
	}
	port := h[i+1:]
	if port == "" {
		return h[:i]
	}
	for j := 0; j < len(port); j++ {
		if port[j] < '0' || port[j] > '9' {
			return h
		}
	}
	return h[:i]
}

func (a *action) match(r *Request) bool {
	if a.grpc {
		if r.GRPCService == "" {
			return false
		}
		for _, x := range a.rpcs {
			if x.service == r.GRPCService && (x.method == "*" || x.method == r.GRPCMethod) {
				return true
			}
		}
		return false
	}
	if len(a.methods) > 0 && !containsString(a.methods, r.Method) {
		return false
	}
	return len(a.paths) == 0 || matchAny(a.paths, r.Path)
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func matchAny(ps []pattern.Pattern, name string) bool {
	for i := range ps {
		if ps[i].Match(name) {
			return true
		}
	}
	return false
}
