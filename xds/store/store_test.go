package store

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

func open(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func revocation(name string) *mandatev1.Revocation {
	return &mandatev1.Revocation{Name: name, Kind: "subject", Value: "spiffe://example.org/agent/" + name,
		Intents: []string{"read"}, Expires: timestamppb.New(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)),
		Reason: "test", CreatedBy: "spiffe://example.org/user/ops"}
}

func TestReopenKeepsEverything(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := open(t, dir)
	pub, priv, _ := ed25519.GenerateKey(nil)
	pol := &mandatev1.Policy{Name: "p1", Source: []byte("x: 1\n"), SourceFile: "p1.yaml", Version: mandatev1.PolicyVersion([]byte("x: 1\n"))}
	steps := []struct {
		name string
		do   func() error
	}{
		{"policy", func() error { _, err := s.PutPolicy(ctx, pol); return err }},
		{"policy 2", func() error {
			_, err := s.PutPolicy(ctx, &mandatev1.Policy{Name: "p2", Source: []byte("y")})
			return err
		}},
		{"delete policy 2", func() error { _, err := s.DeletePolicy(ctx, "p2"); return err }},
		{"revocation", func() error {
			_, err := s.PutRevocation(ctx, revocation("r1"), AuditEntry{Actor: "spiffe://example.org/user/ops", Action: "revoke", Object: "r1"})
			return err
		}},
		{"approval", func() error {
			_, err := s.PutApproval(ctx, &mandatev1.Approval{Name: "a1", Subject: "spiffe://example.org/agent/a", ApprovedBy: "bob"})
			return err
		}},
		{"key", func() error {
			_, err := s.PutKey(ctx, &mandatev1.VerificationKey{Name: "k1", Algorithm: "EdDSA", PublicKey: pub})
			return err
		}},
		{"signing key", func() error {
			return s.PutSigningKey(ctx, SigningKey{ID: "k1", Algorithm: "EdDSA", Private: priv, CreatedAt: time.Unix(100, 0).UTC()})
		}},
		{"audit", func() error {
			return s.Audit(ctx, AuditEntry{Actor: "spiffe://example.org/user/ops", Action: "apply", Object: "p1"})
		}},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
	}
	if _, err := s.DeletePolicy(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete missing policy: %v, want ErrNotFound", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, dir)
	defer s.Close()
	ps, pv, err := s.Policies(ctx)
	if err != nil || pv != 3 || len(ps) != 1 || !proto.Equal(ps["p1"], pol) {
		t.Fatalf("policies after reopen: %v version %d err %v", ps, pv, err)
	}
	rs, rv, err := s.Revocations(ctx)
	if err != nil || rv != 1 || !proto.Equal(rs["r1"], revocation("r1")) {
		t.Fatalf("revocations after reopen: %v version %d err %v", rs, rv, err)
	}
	as, _, err := s.Approvals(ctx)
	if err != nil || as["a1"].GetApprovedBy() != "bob" {
		t.Fatalf("approvals after reopen: %v %v", as, err)
	}
	ks, kv, err := s.Keys(ctx)
	if err != nil || kv != 1 || string(ks["k1"].GetPublicKey()) != string(pub) {
		t.Fatalf("keys after reopen: %v %v", ks, err)
	}
	sk, err := s.SigningKey(ctx, "k1")
	if err != nil || string(sk.Private) != string(priv) || !sk.CreatedAt.Equal(time.Unix(100, 0)) {
		t.Fatalf("signing key after reopen: %+v %v", sk, err)
	}
	if _, err := s.SigningKey(ctx, "k2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing signing key: %v", err)
	}
	log, err := s.AuditLog(ctx, time.Time{}, 0)
	if err != nil || len(log) != 2 {
		t.Fatalf("audit log %+v %v", log, err)
	}
	if log[0].Seq != 1 || log[0].Action != "revoke" || log[1].Seq != 2 || log[1].Action != "apply" || log[1].Time.IsZero() {
		t.Fatalf("audit log order/content %+v", log)
	}
	for typ, want := range map[string]uint64{mandatev1.PolicyTypeURL: 3, mandatev1.ApprovalTypeURL: 1} {
		if v, err := s.Version(ctx, typ); err != nil || v != want {
			t.Fatalf("Version(%s) = %d %v, want %d", typ, v, err, want)
		}
	}
	if _, err := s.Version(ctx, "nope"); err == nil {
		t.Fatal("Version accepted an unknown type")
	}
}

func TestReplacePoliciesAndFailedWriteRollsBack(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	defer s.Close()
	if _, err := s.PutPolicy(ctx, &mandatev1.Policy{Name: "old", Source: []byte("a")}); err != nil {
		t.Fatal(err)
	}
	v, err := s.ReplacePolicies(ctx, []*mandatev1.Policy{{Name: "n1", Source: []byte("b")}, {Name: "n2", Source: []byte("c")}},
		AuditEntry{Actor: "spiffe://x/y", Action: "apply"})
	if err != nil || v != 2 {
		t.Fatalf("replace: %d %v", v, err)
	}
	ps, _, _ := s.Policies(ctx)
	if len(ps) != 2 || ps["old"] != nil || ps["n1"] == nil {
		t.Fatalf("after replace: %v", ps)
	}
	// A write whose audit entry is invalid commits nothing.
	if _, err := s.PutPolicy(ctx, &mandatev1.Policy{Name: "n3"}, AuditEntry{}); err == nil {
		t.Fatal("write with an invalid audit entry succeeded")
	}
	ps, pv, _ := s.Policies(ctx)
	if len(ps) != 2 || pv != 2 {
		t.Fatalf("failed write changed state: %d policies, version %d", len(ps), pv)
	}
	if _, err := s.ReplacePolicies(ctx, []*mandatev1.Policy{{Name: "d"}, {Name: "d"}}); err == nil {
		t.Fatal("duplicate names accepted")
	}
	if _, err := s.PutRevocation(ctx, &mandatev1.Revocation{}); err == nil {
		t.Fatal("nameless revocation accepted")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.PutRevocation(cctx, revocation("r")); !errors.Is(err, context.Canceled) {
		t.Fatalf("write with cancelled context: %v", err)
	}
	log, _ := s.AuditLog(ctx, time.Time{}, 0)
	if len(log) != 1 {
		t.Fatalf("audit log has %d entries, want 1", len(log))
	}
}

func TestAuditLogSinceAndLimit(t *testing.T) {
	ctx := context.Background()
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := open(t, t.TempDir())
	defer s.Close()
	for i := 0; i < 10; i++ {
		if err := s.Audit(ctx, AuditEntry{Time: base.Add(time.Duration(i) * time.Minute), Actor: "a", Action: "act", Object: strconv.Itoa(i)}); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		since      time.Time
		limit      int
		first, len int
	}{
		{time.Time{}, 0, 0, 10},
		{base.Add(5 * time.Minute), 0, 5, 5},
		{base.Add(5 * time.Minute), 2, 5, 2},
		{base.Add(time.Hour), 0, 0, 0},
	}
	for _, tt := range tests {
		got, err := s.AuditLog(ctx, tt.since, tt.limit)
		if err != nil || len(got) != tt.len {
			t.Fatalf("AuditLog(%v,%d): %d entries %v, want %d", tt.since, tt.limit, len(got), err, tt.len)
		}
		if tt.len > 0 && got[0].Object != strconv.Itoa(tt.first) {
			t.Fatalf("AuditLog(%v,%d) starts at %s, want %d", tt.since, tt.limit, got[0].Object, tt.first)
		}
	}
}

func TestSecondOpenFails(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	defer s.Close()
	if _, err := Open(context.Background(), dir); err == nil {
		t.Fatal("a second Open of a held database succeeded")
	}
}

const killEnv = "MANDATE_STORE_KILL_DIR"

// TestKill9 runs a child that writes records as fast as it can and
// SIGKILLs itself; every write the child saw return nil must be there.
func TestKill9(t *testing.T) {
	if dir := os.Getenv(killEnv); dir != "" {
		killHelper(dir)
		return
	}
	if testing.Short() {
		t.Skip("spawns a subprocess")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKill9$", "-test.count=1")
	cmd.Env = append(os.Environ(), killEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var acked []string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if line := sc.Text(); len(line) > 3 && line[:3] == "ok " {
			acked = append(acked, line[3:])
		}
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die by SIGKILL: %v", err)
	}
	t.Logf("child acknowledged %d writes before SIGKILL", len(acked))
	if len(acked) < 10 {
		t.Fatalf("child acknowledged only %d writes", len(acked))
	}
	s := open(t, dir)
	defer s.Close()
	rs, v, err := s.Revocations(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range acked {
		if !proto.Equal(rs[name], revocation(name)) {
			t.Fatalf("acknowledged write %s lost after kill -9 (%d acked, %d stored)", name, len(acked), len(rs))
		}
	}
	if v < uint64(len(acked)) {
		t.Fatalf("version %d below %d acknowledged writes", v, len(acked))
	}
	log, err := s.AuditLog(context.Background(), time.Time{}, 100000)
	if err != nil || len(log) < len(acked) {
		t.Fatalf("audit entries %d, acknowledged writes %d: %v", len(log), len(acked), err)
	}
}

func killHelper(dir string) {
	s, err := Open(context.Background(), dir)
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(2)
	}
	go func() {
		time.Sleep(300 * time.Millisecond)
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	}()
	for i := 0; ; i++ {
		name := fmt.Sprintf("r%06d", i)
		if _, err := s.PutRevocation(context.Background(), revocation(name), AuditEntry{Actor: "spiffe://x/y", Action: "revoke", Object: name}); err != nil {
			fmt.Println("error:", err)
			continue
		}
		// Unbuffered: the parent sees the line as soon as the write returned.
		_, _ = os.Stdout.WriteString("ok " + name + "\n")
	}
}

func TestRevocationBatches(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := open(t, dir)
	batch := make([]*mandatev1.Revocation, 0, 500)
	audit := make([]AuditEntry, 0, 500)
	for i := range 500 {
		name := "r" + strconv.Itoa(i)
		batch = append(batch, revocation(name))
		audit = append(audit, AuditEntry{Actor: "spiffe://example.org/user/ops", Action: "revocation.create", Object: "revocation/" + name})
	}
	v, err := s.PutRevocations(ctx, batch, audit...)
	if err != nil || v != 1 {
		t.Fatalf("PutRevocations = %d, %v; want version 1", v, err)
	}

	// Refused batches change nothing: not the records, the version or the audit trail.
	bad := []struct {
		name string
		do   func() error
		want error
	}{
		{"empty put", func() error { _, err := s.PutRevocations(ctx, nil); return err }, nil},
		{"duplicate in batch", func() error {
			_, err := s.PutRevocations(ctx, []*mandatev1.Revocation{revocation("x"), revocation("x")})
			return err
		}, nil},
		{"unnamed", func() error {
			_, err := s.PutRevocations(ctx, []*mandatev1.Revocation{revocation("y"), {}})
			return err
		}, nil},
		{"bad audit rolls back", func() error {
			_, err := s.PutRevocations(ctx, []*mandatev1.Revocation{revocation("z")}, AuditEntry{Actor: "a"})
			return err
		}, nil},
		{"empty delete", func() error { _, err := s.DeleteRevocations(ctx, nil); return err }, nil},
		{"delete with a missing name", func() error {
			_, err := s.DeleteRevocations(ctx, []string{"r1", "nope"}, AuditEntry{Action: "revocation.gc"})
			return err
		}, ErrNotFound},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.do()
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Fatalf("err = %v, want an error (%v)", err, tt.want)
			}
		})
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, dir)
	defer s.Close()
	got, v, err := s.Revocations(ctx)
	if err != nil || v != 1 || len(got) != 500 {
		t.Fatalf("after reopen: %d records at version %d (%v); want 500 at 1", len(got), v, err)
	}
	for _, r := range batch {
		if !proto.Equal(got[r.GetName()], r) {
			t.Fatalf("record %s = %v, want %v", r.GetName(), got[r.GetName()], r)
		}
	}
	log, err := s.AuditLog(ctx, time.Time{}, 0)
	if err != nil || len(log) != 500 {
		t.Fatalf("audit: %d entries (%v), want 500", len(log), err)
	}

	v, err = s.DeleteRevocations(ctx, []string{"r0", "r1", "r2"}, AuditEntry{Actor: "system", Action: "revocation.gc", Object: "revocations"})
	if err != nil || v != 2 {
		t.Fatalf("DeleteRevocations = %d, %v; want version 2", v, err)
	}
	got, _, _ = s.Revocations(ctx)
	if len(got) != 497 || got["r0"] != nil || got["r3"] == nil {
		t.Fatalf("after delete: %d records", len(got))
	}
}
