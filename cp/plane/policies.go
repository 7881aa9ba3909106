package plane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/policies"
	"github.com/mandate-dev/mandate/xds/mandatev1"
	"github.com/mandate-dev/mandate/xds/resource"
)

var policyNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$`)

// Change says what an apply does to one policy.
type Change struct {
	Name string
	// Kind is "added", "changed", "unchanged" or "deleted".
	Kind string
	// Diff is a line diff for "changed".
	Diff string
}

// ApplyResult is the outcome of ApplyPolicySet.
type ApplyResult struct {
	Changes []Change
	// Version is the Policy version replicas must ACK.
	Version string
	// Changed is false when the apply (or dry run) changes nothing.
	Changed bool
}

// CompilePolicies compiles Policy resources exactly as a replica will
// (resource.CompilePolicies). Errors are *InvalidError.
func CompilePolicies(ps []*mandatev1.Policy) (*policies.Set, error) {
	set, err := resource.CompilePolicies(ps)
	if err != nil {
		return nil, &InvalidError{Err: err}
	}
	return set, nil
}

func checkPolicyResource(p *mandatev1.Policy) error {
	if p == nil {
		return invalid("nil policy")
	}
	label := p.GetSourceFile()
	if label == "" {
		label = p.GetName()
	}
	switch {
	case !policyNameRe.MatchString(p.GetName()):
		return invalid("%s: policy resource name %q: want 1-253 letters, digits, '.', '_' or '-'", label, p.GetName())
	case len(p.GetSource()) == 0:
		return invalid("%s: empty source", label)
	case len(p.GetSource()) > MaxPolicySource:
		return invalid("%s: source of %d bytes exceeds %d", label, len(p.GetSource()), MaxPolicySource)
	case len(p.GetSourceFile()) > 1024:
		return invalid("%s: source file name too long", label[:64])
	}
	return nil
}

// ApplyPolicies upserts policy resources. The whole resulting set must
// compile or nothing changes. It returns the Policy version.
func (p *Plane) ApplyPolicies(ctx context.Context, ps []*mandatev1.Policy, actor string) (string, error) {
	res, err := p.ApplyPolicySet(ctx, ps, false, false, actor)
	return res.Version, err
}

// ApplyPolicySet upserts ps; with prune, stored policies not in ps are
// deleted; with dryRun nothing is stored and the result says what an
// apply would change.
func (p *Plane) ApplyPolicySet(ctx context.Context, ps []*mandatev1.Policy, prune, dryRun bool, actor string) (ApplyResult, error) {
	p.lockWrite()
	defer p.unlockWrite()
	for attempt := 1; ; attempt++ {
		res, err := p.applyPolicySet(ctx, ps, prune, dryRun, actor)
		if !errors.Is(err, store.ErrConflict) || attempt == maxPlanAttempts {
			return res, err
		}
		// Another instance changed the policies after this copy was
		// planned on: serve what the store holds now, and plan again.
		if err := p.catchUp(ctx); err != nil {
			return ApplyResult{}, err
		}
	}
}

// maxPlanAttempts bounds the plans of one write that other instances'
// writes keep making stale.
const maxPlanAttempts = 3

// catchUp returns once the plane serves every commit the store holds
// (callers hold the write lock; mu is released while it waits).
func (p *Plane) catchUp(ctx context.Context) error {
	p.mu.Unlock()
	defer p.mu.Lock()
	rev, err := p.st.Revision(ctx)
	if err != nil {
		return fmt.Errorf("plane: %w", err)
	}
	if err := p.waitServed(ctx, rev); err != nil {
		return fmt.Errorf("plane: store revision %d not yet served: %w", rev, err)
	}
	return nil
}

func (p *Plane) applyPolicySet(ctx context.Context, ps []*mandatev1.Policy, prune, dryRun bool, actor string) (ApplyResult, error) {
	res, next, err := p.planPolicies(ps, prune)
	if err != nil {
		if !dryRun {
			p.countWrite(mandatev1.PolicyTypeURL, err)
		}
		return ApplyResult{Version: p.xds.Versions()[mandatev1.PolicyTypeURL]}, err
	}
	res.Version = p.xds.Versions()[mandatev1.PolicyTypeURL]
	if dryRun || !res.Changed {
		return res, nil
	}
	var summary []string
	for _, c := range res.Changes {
		if c.Kind != "unchanged" {
			summary = append(summary, c.Kind+" "+c.Name)
		}
	}
	all := make([]resource.Named, 0, len(next))
	for _, name := range slices.Sorted(maps.Keys(next)) {
		all = append(all, next[name])
	}
	res.Version, err = p.commit(ctx, write{typeURL: mandatev1.PolicyTypeURL, put: all, replace: true,
		base:  p.typeRev[mandatev1.PolicyTypeURL],
		audit: []store.AuditEntry{p.audit(actor, "policy.apply", "policies", strings.Join(summary, ", "))}})
	if err != nil {
		return ApplyResult{}, err
	}
	p.log.Info("policies applied", "actor", actor, "changes", strings.Join(summary, ", "), "version", res.Version)
	return res, nil
}

// planPolicies validates ps against the current set and returns the
// changes and the resulting set. Callers hold the write lock.
func (p *Plane) planPolicies(ps []*mandatev1.Policy, prune bool) (ApplyResult, map[string]*mandatev1.Policy, error) {
	if len(ps) > MaxPolicies {
		return ApplyResult{}, nil, invalid("%d policy files exceed the limit of %d", len(ps), MaxPolicies)
	}
	cur := p.res[mandatev1.PolicyTypeURL]
	next := map[string]*mandatev1.Policy{}
	if !prune {
		for name, r := range cur {
			next[name] = r.(*mandatev1.Policy)
		}
	}
	seen := map[string]bool{}
	var res ApplyResult
	for _, in := range ps {
		if err := checkPolicyResource(in); err != nil {
			return ApplyResult{}, nil, err
		}
		if seen[in.GetName()] {
			return ApplyResult{}, nil, invalid("policy resource %q given twice", in.GetName())
		}
		seen[in.GetName()] = true
		np := &mandatev1.Policy{Name: in.GetName(), Source: slices.Clone(in.GetSource()),
			SourceFile: in.GetSourceFile(), Version: mandatev1.PolicyVersion(in.GetSource())}
		old, ok := cur[in.GetName()]
		switch {
		case !ok:
			res.Changes = append(res.Changes, Change{Name: np.Name, Kind: "added"})
		case bytes.Equal(old.(*mandatev1.Policy).GetSource(), np.GetSource()):
			// The same content from another path: nothing changes (the
			// path is metadata of the first apply).
			res.Changes = append(res.Changes, Change{Name: np.Name, Kind: "unchanged"})
			np = old.(*mandatev1.Policy)
		default:
			res.Changes = append(res.Changes, Change{Name: np.Name, Kind: "changed",
				Diff: LineDiff(string(old.(*mandatev1.Policy).GetSource()), string(np.GetSource()))})
		}
		next[np.Name] = np
	}
	if prune {
		for name := range cur {
			if !seen[name] {
				res.Changes = append(res.Changes, Change{Name: name, Kind: "deleted"})
			}
		}
	}
	slices.SortFunc(res.Changes, func(a, b Change) int { return strings.Compare(a.Name, b.Name) })
	for _, c := range res.Changes {
		if c.Kind != "unchanged" {
			res.Changed = true
		}
	}
	size := 0
	for _, np := range next {
		size += proto.Size(np) + 64
	}
	if size > MaxPolicySetBytes {
		return ApplyResult{}, nil, invalid("the policy set would be %d bytes, more than one push carries (%d)", size, MaxPolicySetBytes)
	}
	if _, err := CompilePolicies(slices.Collect(maps.Values(next))); err != nil {
		return ApplyResult{}, nil, err
	}
	return res, next, nil
}

// DeletePolicy removes one policy; the remaining set must still compile.
func (p *Plane) DeletePolicy(ctx context.Context, name, actor string) (string, error) {
	p.lockWrite()
	defer p.unlockWrite()
	cur := p.res[mandatev1.PolicyTypeURL]
	if _, ok := cur[name]; !ok {
		return "", fmt.Errorf("policy %q: %w", name, ErrNotFound)
	}
	rest := make([]*mandatev1.Policy, 0, len(cur))
	for n, r := range cur {
		if n != name {
			rest = append(rest, r.(*mandatev1.Policy))
		}
	}
	if _, err := CompilePolicies(rest); err != nil {
		p.countWrite(mandatev1.PolicyTypeURL, err)
		return "", err
	}
	v, err := p.commit(ctx, write{typeURL: mandatev1.PolicyTypeURL, del: []string{name},
		audit: []store.AuditEntry{p.audit(actor, "policy.delete", "policy/"+name, "")}})
	if err != nil {
		return "", err
	}
	p.log.Info("policy deleted", "actor", actor, "policy", name, "version", v)
	return v, nil
}

// Policies returns the stored policies sorted by name, and the version.
func (p *Plane) Policies() ([]*mandatev1.Policy, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return sortedClones[*mandatev1.Policy](p.res[mandatev1.PolicyTypeURL]), p.xds.Versions()[mandatev1.PolicyTypeURL]
}
