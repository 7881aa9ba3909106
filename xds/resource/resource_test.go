package resource

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

const goodPolicy = `apiVersion: mandate.dev/v1
kind: Policy
metadata:
  name: reader
spec:
  rules:
    - name: read
      effect: allow
      subjects: ["spiffe://example.org/agent/*"]
      actions:
        - methods: [GET]
          paths: ["/data/*"]
`

func TestKindsCoverEveryType(t *testing.T) {
	ks := Kinds()
	urls := mandatev1.TypeURLs()
	if len(ks) != len(urls) {
		t.Fatalf("%d kinds for %d types", len(ks), len(urls))
	}
	for i, k := range ks {
		if k.TypeURL != urls[i] || Short(k.TypeURL) != k.Short {
			t.Errorf("kind %d: %s (%s), want %s", i, k.TypeURL, k.Short, urls[i])
		}
		m := k.New()
		if got := "type.googleapis.com/" + string(m.ProtoReflect().Descriptor().FullName()); got != k.TypeURL {
			t.Errorf("%s: New makes a %s", k.TypeURL, got)
		}
	}
	if _, ok := KindOf("type.googleapis.com/mandate.v1.Nope"); ok {
		t.Fatal("unknown type has a kind")
	}
}

func TestChecks(t *testing.T) {
	future := timestamppb.New(time.Now().Add(time.Hour))
	tests := []struct {
		name string
		m    Named
		want string // "" = valid
	}{
		{"policy", &mandatev1.Policy{Name: "p", Source: []byte(goodPolicy)}, ""},
		{"policy empty", &mandatev1.Policy{Name: "p"}, "empty source"},
		{"policy bad version", &mandatev1.Policy{Name: "p", Source: []byte(goodPolicy), Version: "sha256:00"}, "content hash"},
		{"revocation", &mandatev1.Revocation{Name: "r", Kind: "task", Value: "t", Expires: future}, ""},
		{"revocation bad kind", &mandatev1.Revocation{Name: "r", Kind: "user", Value: "t", Expires: future}, "Revocation \"r\""},
		{"revocation bad time", &mandatev1.Revocation{Name: "r", Kind: "task", Value: "t", Expires: &timestamppb.Timestamp{Seconds: -1 << 62}}, "expires"},
		{"approval", &mandatev1.Approval{Name: "a", Subject: "spiffe://x/y", ApprovedBy: "op", Method: "GET", Expires: future}, ""},
		{"approval no subject", &mandatev1.Approval{Name: "a", Subject: "bob", ApprovedBy: "op", Method: "GET", Expires: future}, "SPIFFE"},
		{"approval no expiry", &mandatev1.Approval{Name: "a", Subject: "spiffe://x/y", ApprovedBy: "op", Method: "GET"}, "expiry"},
		{"key", &mandatev1.VerificationKey{Name: "k", Algorithm: "EdDSA", PublicKey: make([]byte, 32)}, ""},
		{"key short", &mandatev1.VerificationKey{Name: "k", Algorithm: "EdDSA", PublicKey: make([]byte, 31)}, "31 bytes"},
		{"key alg", &mandatev1.VerificationKey{Name: "k", Algorithm: "RS256", PublicKey: make([]byte, 32)}, "EdDSA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, _ := KindOf("type.googleapis.com/" + string(tt.m.ProtoReflect().Descriptor().FullName()))
			err := k.Check(tt.m)
			if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("Check = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestDecode(t *testing.T) {
	p := &mandatev1.Policy{Name: "p", Source: []byte(goodPolicy)}
	a, err := anypb.New(p)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := Decode(mandatev1.PolicyTypeURL, "p", a); err != nil || m.GetName() != "p" {
		t.Fatalf("Decode: %v %v", m, err)
	}
	for name, f := range map[string]func() error{
		"other name": func() error { _, err := Decode(mandatev1.PolicyTypeURL, "q", a); return err },
		"other type": func() error { _, err := Decode(mandatev1.RevocationTypeURL, "p", a); return err },
		"no body":    func() error { _, err := Decode(mandatev1.PolicyTypeURL, "p", nil); return err },
		"garbage": func() error {
			_, err := Unmarshal(mandatev1.PolicyTypeURL, "p", []byte{0xff, 0xff})
			return err
		},
		"unknown type": func() error { _, err := Unmarshal("type.googleapis.com/x.Y", "p", nil); return err },
	} {
		if f() == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestCompilePoliciesNamesTheCulprit(t *testing.T) {
	good := &mandatev1.Policy{Name: "a-good", Source: []byte(goodPolicy)}
	bad := &mandatev1.Policy{Name: "b-bad", Source: []byte(strings.Replace(goodPolicy, "effect: allow", "effect: maybe", 1))}
	if _, err := CompilePolicies([]*mandatev1.Policy{good}); err != nil {
		t.Fatal(err)
	}
	_, err := CompilePolicies([]*mandatev1.Policy{bad, good})
	if err == nil || !strings.Contains(err.Error(), `"b-bad"`) {
		t.Fatalf("err = %v, want it to name b-bad", err)
	}
	empty := &mandatev1.Policy{Name: "c", Source: []byte("# nothing\n")}
	if _, err := CompilePolicies([]*mandatev1.Policy{empty}); err == nil {
		t.Fatal("a resource without a Policy document accepted")
	}
	dup := &mandatev1.Policy{Name: "d", Source: []byte(goodPolicy)}
	if _, err := CompilePolicies([]*mandatev1.Policy{good, dup}); err == nil {
		t.Fatal("two resources defining one policy accepted")
	}
}
