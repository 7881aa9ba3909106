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
// rule), also when another step_up rule matched; in an allow rule's
// condition it makes that rule not match, and if no other rule allows,
// the decision is Deny with ReasonConditionError.
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
	d := Decision{Cacheable: true}
	reason, ru, i := s.decide(r, cands, 0, s.firstDry, &d)
	d.Effect, d.Reason = reasonEffect(reason), reason
	if ru != nil {
		d.Policy, d.Rule = ru.policy, ru.name
		if ru.cond != nil {
			d.ArgumentKeys, d.AllArguments = ru.cond.argKeys, ru.cond.allArgs
			d.HeaderKeys, d.AllHeaders = ru.cond.headerKeys, ru.cond.allHeaders
		}
	}
	if reason == ReasonStepUpRequired {
		// An approval lifts the step-up, never more: it allows only
		// when an allow rule matches as well.
		d.AllowedIfApproved = s.anyAllow(r, cands, i, s.firstDry, &d)
	}
	for i < len(cands) && int(cands[i]) < s.firstDry {
		i++
	}
	if i < len(cands) {
		reason, ru, _ := s.decide(r, cands, i, len(s.rules), &d)
		// A failed dry-run allow rule is just no match; a failed deny or
		// step_up rule is reported as the deny it would enforce.
		if ru != nil && (reason != ReasonConditionError || ru.effect != EffectAllow) {
			d.DryRun = &Match{Policy: ru.policy, Rule: ru.name, Effect: reasonEffect(reason)}
		}
	}
	return d
}

func reasonEffect(r Reason) Effect {
	switch r {
	case ReasonAllowed:
		return EffectAllow
	case ReasonStepUpRequired:
		return EffectStepUp
	}
	return EffectDeny
}

// decide applies the decision semantics to the candidates cands[from:]
// whose ids are below end (candidates are sorted: deny rules, then
// step_up, then allow, each in load order). It returns the reason, the
// deciding rule (nil for no match) and the index of the first candidate
// it did not consider.
func (s *Set) decide(r *Request, cands []int32, from, end int, d *Decision) (Reason, *rule, int) {
	var stepUp, allowErr *rule
	i := from
	for ; i < len(cands) && int(cands[i]) < end; i++ {
		ru := &s.rules[cands[i]]
		if stepUp != nil && ru.effect != EffectStepUp {
			// A step_up matched and every step_up rule has been checked
			// for errors: step_up it is.
			break
		}
		if !ru.matchStatic(r) {
			continue
		}
		ok, err := ru.evalCond(r, d)
		switch {
		case err != nil && ru.effect == EffectAllow:
			if allowErr == nil {
				allowErr = ru
			}
		case err != nil:
			// Fail closed: a deny or step_up rule that cannot be decided
			// denies, and outranks a step_up that matched.
			return ReasonConditionError, ru, i + 1
		case !ok:
		case ru.effect == EffectDeny:
			return ReasonDeniedByRule, ru, i + 1
		case ru.effect == EffectStepUp:
			if stepUp == nil {
				stepUp = ru
			}
		default:
			return ReasonAllowed, ru, i + 1
		}
	}
	switch {
	case stepUp != nil:
		return ReasonStepUpRequired, stepUp, i
	case allowErr != nil:
		return ReasonConditionError, allowErr, i
	}
	return ReasonNoMatch, nil, i
}

// anyAllow reports whether an enforce-mode allow rule among cands[from:]
// (ids below end) matches r, its condition included.
func (s *Set) anyAllow(r *Request, cands []int32, from, end int, d *Decision) bool {
	for i := from; i < len(cands) && int(cands[i]) < end; i++ {
		ru := &s.rules[cands[i]]
		if ru.effect != EffectAllow || !ru.matchStatic(r) {
			continue
		}
		if ok, err := ru.evalCond(r, d); ok && err == nil {
			return true
		}
	}
	return false
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

// matchHost matches Request.Host, which the authorizer's one host
// normalizer (authz/attrs.Host) has already lowercased and stripped of its
// port.
func (ru *rule) matchHost(host string) bool {
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

func (a *action) match(r *Request) bool {
	if a.mcp != nil {
		return a.mcp.match(r.MCP)
	}
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
	if len(a.paths) == 0 {
		return true
	}
	if r.Labels[LabelPathCase] == "insensitive" {
		return matchAny(a.folded, r.Path)
	}
	return matchAny(a.paths, r.Path)
}

// match reports whether the MCP request c (nil when the request is not
// MCP) matches every list the action sets.
func (a *mcpAction) match(c *MCPCall) bool {
	if c == nil {
		return false
	}
	if len(a.methods) > 0 && !containsString(a.methods, c.Method) {
		return false
	}
	if len(a.tools) > 0 && (c.Method != "tools/call" || c.Tool == "" || !matchAny(a.tools, c.Tool)) {
		return false
	}
	if len(a.resources) > 0 && (c.ResourceURI == "" || !matchAny(a.resources, c.ResourceURI)) {
		return false
	}
	return true
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
