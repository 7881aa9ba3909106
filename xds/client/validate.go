package xdsclient

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

// entry is one resource as the server sent it: kept raw so that the set
// the server believes we hold is tracked even when it does not validate.
type entry struct {
	version string
	res     *anypb.Any
}

// compiled is the validated form of one type's resources.
type compiled struct {
	policies    *policies.Set
	revocations *revocation.Set
	approvals   []*mandatev1.Approval
	keys        []*mandatev1.VerificationKey
}

// emptyCompiled is a type's value before anything validated.
func emptyCompiled(typeURL string) compiled {
	if typeURL == mandatev1.RevocationTypeURL {
		return compiled{revocations: revocation.Empty()}
	}
	return compiled{}
}

// decodeOne unmarshals one resource and checks it on its own: a
// *mandatev1.Policy (parsed with the whole set), an *Approval or
// *VerificationKey validated, or a revocation.Record whose fields are
// validated when it joins a revocation.Set.
func decodeOne(typeURL, name string, e entry) (any, error) {
	if e.res == nil {
		return nil, fmt.Errorf("%s %q: no resource body", short(typeURL), name)
	}
	if e.res.GetTypeUrl() != typeURL {
		return nil, fmt.Errorf("%s %q: resource has type %q", short(typeURL), name, e.res.GetTypeUrl())
	}
	var m interface {
		proto.Message
		GetName() string
	}
	switch typeURL {
	case mandatev1.PolicyTypeURL:
		m = &mandatev1.Policy{}
	case mandatev1.RevocationTypeURL:
		m = &mandatev1.Revocation{}
	case mandatev1.ApprovalTypeURL:
		m = &mandatev1.Approval{}
	case mandatev1.VerificationKeyTypeURL:
		m = &mandatev1.VerificationKey{}
	default:
		return nil, fmt.Errorf("unsupported resource type %q", typeURL)
	}
	if err := proto.Unmarshal(e.res.GetValue(), m); err != nil {
		return nil, fmt.Errorf("%s %q: decode: %w", short(typeURL), name, err)
	}
	if got := m.GetName(); got != name {
		return nil, fmt.Errorf("%s %q: resource names itself %q", short(typeURL), name, got)
	}
	switch m := m.(type) {
	case *mandatev1.Revocation:
		return recordOf(m)
	case *mandatev1.Approval:
		return m, ValidateApproval(m)
	case *mandatev1.VerificationKey:
		return m, ValidateKey(m)
	}
	return m, nil
}

// validate checks a whole type's resource set and compiles it.
func validate(typeURL string, entries map[string]entry) (compiled, error) {
	dirty := make(map[string]struct{}, len(entries))
	for n := range entries {
		dirty[n] = struct{}{}
	}
	comp, _, err := build(typeURL, emptyCompiled(typeURL), nil, entries, dirty, nil)
	return comp, err
}

// build validates and compiles a type's next set: good and dec (the
// decoded form of each resource in good; unused for Revocations, whose
// Set is the state) are what was last applied, received is what the
// server says we hold, and dirty names the resources that differ between
// the two. Only the dirty ones are decoded and validated; decoded counts
// them. It returns the decoded form of the dirty names still received
// (for commit), and leaves its arguments unchanged.
func build(typeURL string, good compiled, dec map[string]any, received map[string]entry,
	dirty map[string]struct{}, decoded *int) (compiled, map[string]any, error) {
	staged := make(map[string]any, len(dirty))
	var gone []string
	for name := range dirty {
		e, ok := received[name]
		if !ok {
			gone = append(gone, name)
			continue
		}
		if decoded != nil {
			*decoded++
		}
		v, err := decodeOne(typeURL, name, e)
		if err != nil {
			return compiled{}, nil, err
		}
		staged[name] = v
	}
	if typeURL == mandatev1.RevocationTypeURL {
		put := make([]revocation.Record, 0, len(staged))
		for _, v := range staged {
			put = append(put, v.(revocation.Record))
		}
		set, err := good.revocations.With(put, gone)
		if err != nil {
			var re *revocation.RecordError
			if errors.As(err, &re) {
				return compiled{}, nil, fmt.Errorf("Revocation %q: %w", re.ID, err)
			}
			return compiled{}, nil, fmt.Errorf("revocation set: %w", err)
		}
		return compiled{revocations: set}, staged, nil
	}
	// The other types are small: assemble the whole set, in name order.
	names := make([]string, 0, len(dec)+len(staged))
	for n := range dec {
		if _, changed := dirty[n]; !changed {
			names = append(names, n)
		}
	}
	for n := range staged {
		names = append(names, n)
	}
	slices.Sort(names)
	get := func(n string) any {
		if v, ok := staged[n]; ok {
			return v
		}
		return dec[n]
	}
	switch typeURL {
	case mandatev1.PolicyTypeURL:
		ps := make([]*mandatev1.Policy, len(names))
		for i, n := range names {
			ps[i] = get(n).(*mandatev1.Policy)
		}
		set, err := compilePolicies(ps)
		return compiled{policies: set}, staged, err
	case mandatev1.ApprovalTypeURL:
		as := make([]*mandatev1.Approval, len(names))
		for i, n := range names {
			as[i] = get(n).(*mandatev1.Approval)
		}
		return compiled{approvals: as}, staged, nil
	case mandatev1.VerificationKeyTypeURL:
		ks := make([]*mandatev1.VerificationKey, len(names))
		for i, n := range names {
			ks[i] = get(n).(*mandatev1.VerificationKey)
		}
		return compiled{keys: ks}, staged, nil
	}
	return compiled{}, nil, fmt.Errorf("unsupported resource type %q", typeURL)
}

// compilePolicies parses every Policy resource (in name order) and
// compiles them together, as the replica will enforce them.
func compilePolicies(ps []*mandatev1.Policy) (*policies.Set, error) {
	var all []*policies.Policy
	byResource := make([][]*policies.Policy, 0, len(ps))
	for _, p := range ps {
		if len(p.GetSource()) == 0 {
			return nil, fmt.Errorf("Policy %q: empty source", p.GetName())
		}
		if v := p.GetVersion(); v != "" && v != mandatev1.PolicyVersion(p.GetSource()) {
			return nil, fmt.Errorf("Policy %q: version %q does not match the content hash of its source", p.GetName(), v)
		}
		file := p.GetSourceFile()
		if file == "" {
			file = p.GetName()
		}
		parsed, err := policies.Parse(file, p.GetSource())
		if err != nil {
			return nil, fmt.Errorf("Policy %q: %w", p.GetName(), err)
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
	rec, err := recordOf(r)
	if err != nil {
		return revocation.Record{}, err
	}
	if err := rec.Validate(); err != nil {
		return revocation.Record{}, fmt.Errorf("Revocation %q: %w", r.GetName(), err)
	}
	return rec, nil
}

// recordOf converts a Revocation resource, checking its kind and
// timestamps only; revocation.Set validates the rest as it indexes it.
func recordOf(r *mandatev1.Revocation) (revocation.Record, error) {
	if r == nil {
		return revocation.Record{}, errors.New("xdsclient: nil revocation")
	}
	kind, err := revocation.ParseKind(r.GetKind())
	if err != nil {
		return revocation.Record{}, fmt.Errorf("Revocation %q: %w", r.GetName(), err)
	}
	expires, err := timeOf(r.GetExpires())
	if err != nil {
		return revocation.Record{}, fmt.Errorf("Revocation %q: expires: %w", r.GetName(), err)
	}
	created, err := timeOf(r.GetCreatedAt())
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
		rec, err := recordOf(r)
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
		return errors.New("xdsclient: nil approval")
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
	if _, err := timeOf(a.GetExpires()); err != nil {
		return fmt.Errorf("Approval %q: expires: %w", a.GetName(), err)
	}
	return nil
}

// ValidateKey checks that a VerificationKey is a raw Ed25519 public key
// for "EdDSA" with a sane validity window.
func ValidateKey(k *mandatev1.VerificationKey) error {
	if k == nil {
		return errors.New("xdsclient: nil key")
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
	nb, err := timeOf(k.GetNotBefore())
	if err != nil {
		return fmt.Errorf("VerificationKey %q: not_before: %w", k.GetName(), err)
	}
	na, err := timeOf(k.GetNotAfter())
	if err != nil {
		return fmt.Errorf("VerificationKey %q: not_after: %w", k.GetName(), err)
	}
	if !nb.IsZero() && !na.IsZero() && !nb.Before(na) {
		return fmt.Errorf("VerificationKey %q: not_before is not before not_after", k.GetName())
	}
	return nil
}

// timeOf converts an optional timestamp; nil gives the zero time.
func timeOf(ts *timestamppb.Timestamp) (time.Time, error) {
	if ts == nil {
		return time.Time{}, nil
	}
	if err := ts.CheckValid(); err != nil {
		return time.Time{}, err
	}
	return ts.AsTime(), nil
}

func short(typeURL string) string {
	if i := strings.LastIndexByte(typeURL, '.'); i >= 0 {
		return typeURL[i+1:]
	}
	return typeURL
}
