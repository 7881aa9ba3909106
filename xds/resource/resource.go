// Package resource converts and validates mandate.v1 resources, for the
// control plane before it stores a write and for the replicas before they
// install a push: one code, so "validated exactly as a replica will"
// holds by construction.
//
// Every kind has a descriptor (Kind): its type URL, a constructor and the
// check of one resource on its own. Checks of a whole set (policies
// compile together; revocations are indexed) are CompilePolicies and
// RevocationSet.
package resource

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/authz/revocation"
	"github.com/mandate-dev/mandate/policies"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// Named is a mandate.v1 resource.
type Named interface {
	proto.Message
	GetName() string
}

// Kind describes one mandate.v1 resource kind.
type Kind struct {
	TypeURL string
	// Short is the message name (Policy, Revocation, ...).
	Short string
	// New returns an empty message of the kind.
	New func() Named
	// Check validates one resource on its own.
	Check func(Named) error
}

var kinds = []Kind{
	{mandatev1.PolicyTypeURL, "Policy", func() Named { return &mandatev1.Policy{} },
		func(m Named) error { return CheckPolicy(m.(*mandatev1.Policy)) }},
	{mandatev1.RevocationTypeURL, "Revocation", func() Named { return &mandatev1.Revocation{} },
		func(m Named) error { _, err := RevocationRecord(m.(*mandatev1.Revocation)); return err }},
	{mandatev1.ApprovalTypeURL, "Approval", func() Named { return &mandatev1.Approval{} },
		func(m Named) error { return ValidateApproval(m.(*mandatev1.Approval)) }},
	{mandatev1.VerificationKeyTypeURL, "VerificationKey", func() Named { return &mandatev1.VerificationKey{} },
		func(m Named) error { return ValidateKey(m.(*mandatev1.VerificationKey)) }},
}

// Kinds returns every kind, in the order of mandatev1.TypeURLs.
func Kinds() []Kind { return slices.Clone(kinds) }

// KindOf returns the kind of a type URL.
func KindOf(typeURL string) (Kind, bool) {
	for _, k := range kinds {
		if k.TypeURL == typeURL {
			return k, true
		}
	}
	return Kind{}, false
}

// Short returns a type URL's message name.
func Short(typeURL string) string {
	if i := strings.LastIndexByte(typeURL, '.'); i >= 0 {
		return typeURL[i+1:]
	}
	return typeURL
}

// Unmarshal decodes one resource of typeURL stored or sent under name:
// the message must name itself name. It does not Check it.
func Unmarshal(typeURL, name string, b []byte) (Named, error) {
	k, ok := KindOf(typeURL)
	if !ok {
		return nil, fmt.Errorf("unsupported resource type %q", typeURL)
	}
	m := k.New()
	if err := proto.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("%s %q: decode: %w", k.Short, name, err)
	}
	if got := m.GetName(); got != name {
		return nil, fmt.Errorf("%s %q: resource names itself %q", k.Short, name, got)
	}
	return m, nil
}

// Decode decodes a resource as a replica receives it (an Any of typeURL).
func Decode(typeURL, name string, a *anypb.Any) (Named, error) {
	if a == nil {
		return nil, fmt.Errorf("%s %q: no resource body", Short(typeURL), name)
	}
	if a.GetTypeUrl() != typeURL {
		return nil, fmt.Errorf("%s %q: resource has type %q", Short(typeURL), name, a.GetTypeUrl())
	}
	return Unmarshal(typeURL, name, a.GetValue())
}

// Marshal encodes a resource deterministically (as the store keeps it).
func Marshal(m Named) ([]byte, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %q: %w", m.GetName(), err)
	}
	return b, nil
}

// CheckPolicy checks one Policy resource on its own: a source, and a
// version (when set) that is the content hash of the source.
func CheckPolicy(p *mandatev1.Policy) error {
	if p == nil {
		return errors.New("nil policy")
	}
	if len(p.GetSource()) == 0 {
		return fmt.Errorf("Policy %q: empty source", p.GetName())
	}
	if v := p.GetVersion(); v != "" && v != mandatev1.PolicyVersion(p.GetSource()) {
		return fmt.Errorf("Policy %q: version %q does not match the content hash of its source", p.GetName(), v)
	}
	return nil
}

// CompilePolicies parses every Policy resource, in name order, each
// labelled by its source file (or name), and compiles them together:
// the policy set a replica enforces.
func CompilePolicies(ps []*mandatev1.Policy) (*policies.Set, error) {
	ps = slices.Clone(ps)
	slices.SortFunc(ps, func(a, b *mandatev1.Policy) int { return strings.Compare(a.GetName(), b.GetName()) })
	var all []*policies.Policy
	byResource := make([][]*policies.Policy, 0, len(ps))
	for _, p := range ps {
		if err := CheckPolicy(p); err != nil {
			return nil, err
		}
		file := p.GetSourceFile()
		if file == "" {
			file = p.GetName()
		}
		parsed, err := policies.Parse(file, p.GetSource())
		if err != nil {
			return nil, fmt.Errorf("Policy %q: %w", p.GetName(), err)
		}
		if len(parsed) == 0 {
			return nil, fmt.Errorf("Policy %q: %s: no Policy document", p.GetName(), file)
		}
		all = append(all, parsed...)
		byResource = append(byResource, parsed)
	}
	set, err := policies.Compile(all)
	if err != nil {
		// Name the resources that fail on their own; when none does the
		// conflict is between resources (duplicate names, for example).
		var culprits []string
		for i, parsed := range byResource {
			if _, e := policies.Compile(parsed); e != nil {
				culprits = append(culprits, fmt.Sprintf("%q", ps[i].GetName()))
			}
		}
		if len(culprits) > 0 {
			return nil, fmt.Errorf("Policy %s: compile: %w", strings.Join(culprits, ", "), err)
		}
		return nil, fmt.Errorf("compile policy set: %w", err)
	}
	return set, nil
}

// RevocationRecord converts a Revocation resource into a revocation.Record
// and validates it.
func RevocationRecord(r *mandatev1.Revocation) (revocation.Record, error) {
	rec, err := RecordOf(r)
	if err != nil {
		return revocation.Record{}, err
	}
	if err := rec.Validate(); err != nil {
		return revocation.Record{}, fmt.Errorf("Revocation %q: %w", r.GetName(), err)
	}
	return rec, nil
}

// RecordOf converts a Revocation resource, checking its kind and
// timestamps only; revocation.Set validates the rest as it indexes it.
func RecordOf(r *mandatev1.Revocation) (revocation.Record, error) {
	if r == nil {
		return revocation.Record{}, errors.New("nil revocation")
	}
	kind, err := revocation.ParseKind(r.GetKind())
	if err != nil {
		return revocation.Record{}, fmt.Errorf("Revocation %q: %w", r.GetName(), err)
	}
	expires, err := TimeOf(r.GetExpires())
	if err != nil {
		return revocation.Record{}, fmt.Errorf("Revocation %q: expires: %w", r.GetName(), err)
	}
	created, err := TimeOf(r.GetCreatedAt())
	if err != nil {
		return revocation.Record{}, fmt.Errorf("Revocation %q: created_at: %w", r.GetName(), err)
	}
	return revocation.Record{
		ID: r.GetName(), Kind: kind, Value: r.GetValue(),
		Intents: slices.Clone(r.GetIntents()), Expires: expires,
		Reason: r.GetReason(), CreatedAt: created, CreatedBy: r.GetCreatedBy(),
	}, nil
}

// RevocationSet converts, validates and indexes Revocation resources
// (each subject pattern is compiled once).
func RevocationSet(rs []*mandatev1.Revocation) (*revocation.Set, error) {
	recs := make([]revocation.Record, 0, len(rs))
	for _, r := range rs {
		rec, err := RecordOf(r)
		if err != nil {
			return nil, err
		}
		recs = append(recs, rec)
	}
	set, err := revocation.NewSet(recs)
	if err != nil {
		var re *revocation.RecordError
		if errors.As(err, &re) {
			return nil, fmt.Errorf("Revocation %q: %w", re.ID, err)
		}
		return nil, fmt.Errorf("revocation set: %w", err)
	}
	return set, nil
}

// ValidateApproval checks that an Approval names its subject, approver and
// expiry. An expired approval is valid (it simply no longer applies).
func ValidateApproval(a *mandatev1.Approval) error {
	if a == nil {
		return errors.New("nil approval")
	}
	switch {
	case a.GetName() == "":
		return errors.New("Approval: empty name")
	case !strings.HasPrefix(a.GetSubject(), "spiffe://"):
		return fmt.Errorf("Approval %q: subject %q is not a SPIFFE ID", a.GetName(), a.GetSubject())
	case a.GetApprovedBy() == "":
		return fmt.Errorf("Approval %q: no approved_by", a.GetName())
	case a.GetMethod() == "" && a.GetPath() == "" && a.GetGrpc() == "":
		return fmt.Errorf("Approval %q: names no method, path or grpc method", a.GetName())
	}
	if a.GetExpires() == nil {
		return fmt.Errorf("Approval %q: no expiry", a.GetName())
	}
	if _, err := TimeOf(a.GetExpires()); err != nil {
		return fmt.Errorf("Approval %q: expires: %w", a.GetName(), err)
	}
	return nil
}

// ValidateKey checks that a VerificationKey is a raw Ed25519 public key
// for "EdDSA" with a sane validity window.
func ValidateKey(k *mandatev1.VerificationKey) error {
	if k == nil {
		return errors.New("nil key")
	}
	if k.GetName() == "" {
		return errors.New("VerificationKey: empty name")
	}
	if k.GetAlgorithm() != "EdDSA" {
		return fmt.Errorf("VerificationKey %q: algorithm %q, want EdDSA", k.GetName(), k.GetAlgorithm())
	}
	if n := len(k.GetPublicKey()); n != ed25519.PublicKeySize {
		return fmt.Errorf("VerificationKey %q: public key is %d bytes, want %d", k.GetName(), n, ed25519.PublicKeySize)
	}
	nb, err := TimeOf(k.GetNotBefore())
	if err != nil {
		return fmt.Errorf("VerificationKey %q: not_before: %w", k.GetName(), err)
	}
	na, err := TimeOf(k.GetNotAfter())
	if err != nil {
		return fmt.Errorf("VerificationKey %q: not_after: %w", k.GetName(), err)
	}
	if !nb.IsZero() && !na.IsZero() && !nb.Before(na) {
		return fmt.Errorf("VerificationKey %q: not_before is not before not_after", k.GetName())
	}
	return nil
}

// TimeOf converts an optional timestamp; nil gives the zero time.
func TimeOf(ts *timestamppb.Timestamp) (time.Time, error) {
	if ts == nil {
		return time.Time{}, nil
	}
	if err := ts.CheckValid(); err != nil {
		return time.Time{}, err
	}
	return ts.AsTime(), nil
}
