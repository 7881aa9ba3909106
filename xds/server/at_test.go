package xdsserver

import (
	"context"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

func msgs(names ...string) map[string]proto.Message {
	out := map[string]proto.Message{}
	for n, r := range revs(names...) {
		out[n] = r
	}
	return out
}

// TestSetAtServesTheGivenVersion: versions given by the caller (the
// store's revisions, sparse and global) are what replicas receive and
// what WaitAcked counts; a version not above the current one is refused;
// a call that changes nothing keeps the current version.
func TestSetAtServesTheGivenVersion(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rt := mandatev1.RevocationTypeURL
	if v, err := h.srv.SetAt(rt, 17, msgs("r1", "r2")); err != nil || v != "17" {
		t.Fatalf("SetAt 17 = %q, %v", v, err)
	}
	d := subscribe(t, ctx, h, "replica-a", nil)
	if v, up, _ := d.next(); v != "17" || !slices.Equal(up, []string{"r1", "r2"}) {
		t.Fatalf("first response %q %v", v, up)
	}
	steps := []struct {
		name     string
		at       uint64
		put      []string
		del      []string
		want     string
		wantErr  bool
		response bool
	}{
		{"sparse jump", 42, []string{"r3"}, nil, "42", false, true},
		{"not above", 42, []string{"r4"}, nil, "42", true, false},
		{"below", 30, []string{"r4"}, nil, "42", true, false},
		{"no change keeps the version", 50, []string{"r3"}, []string{"nope"}, "42", false, false},
		{"delete", 51, nil, []string{"r1"}, "51", false, true},
	}
	for _, st := range steps {
		v, err := h.srv.UpdateAt(rt, st.at, msgs(st.put...), st.del)
		if (err != nil) != st.wantErr || v != st.want {
			t.Fatalf("%s: UpdateAt = %q, %v; want %q (error %v)", st.name, v, err, st.want, st.wantErr)
		}
		if !st.response {
			continue
		}
		if gv, _, _ := d.next(); gv != st.want {
			t.Fatalf("%s: replica got version %q, want %q", st.name, gv, st.want)
		}
		if err := h.srv.WaitAcked(ctx, rt, st.want); err != nil {
			t.Fatal(err)
		}
	}
	if got := h.srv.Versions()[rt]; got != "51" {
		t.Fatalf("Versions = %q", got)
	}
	if rs := replica(t, h.srv, "replica-a"); rs.Types[rt].AckedVersion != "51" {
		t.Fatalf("status: %+v", rs.Types[rt])
	}
	// Mixed: a counted write after explicit ones continues from there.
	if v, err := h.srv.UpdateRevocations(revs("r9"), nil); err != nil || v != "52" {
		t.Fatalf("counted write after explicit ones: %q, %v", v, err)
	}
	for name, f := range map[string]func() error{
		"envoy type": func() error { _, err := h.srv.SetAt(ListenerTypeURL, 99, nil); return err },
		"wrong message type": func() error {
			_, err := h.srv.SetAt(mandatev1.PolicyTypeURL, 99, msgs("r1"))
			return err
		},
		"nil": func() error { _, err := h.srv.SetAt(rt, 99, map[string]proto.Message{"x": nil}); return err },
		"name mismatch": func() error {
			_, err := h.srv.SetAt(rt, 99, map[string]proto.Message{"x": rev("y")})
			return err
		},
	} {
		if f() == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
