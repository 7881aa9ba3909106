package boltstore

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/cp/store/storetest"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Backend {
		be, err := OpenBackend(context.Background(), t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return be
	})
}

func open(t testing.TB, dir string) *store.DB {
	t.Helper()
	d, err := Open(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestReopenKeepsEverything(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := open(t, dir)
	vp, err := d.Put(ctx, mandatev1.PolicyTypeURL, []store.Item{{Name: "p", Value: []byte("x")}})
	if err != nil {
		t.Fatal(err)
	}
	vr, err := d.Put(ctx, mandatev1.RevocationTypeURL, []store.Item{{Name: "r", Value: []byte("y")}},
		store.AuditEntry{Actor: "a", Action: "revoke"})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.PutSigningKey(ctx, store.SigningKey{ID: "k", Algorithm: "EdDSA", Private: []byte("priv")}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ClaimTask(ctx, store.TaskOwner{Task: "T", Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	if err := d.PutPending(ctx, store.PendingApproval{ID: "q", Subject: "s", Expires: time.Now().Add(time.Hour)}, 1); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d = open(t, dir)
	defer d.Close()
	if _, v, _ := d.List(ctx, mandatev1.PolicyTypeURL); v != vp {
		t.Fatalf("policy version %d after reopen, want %d", v, vp)
	}
	if items, v, _ := d.List(ctx, mandatev1.RevocationTypeURL); v != vr || len(items) != 1 || string(items[0].Value) != "y" {
		t.Fatalf("revocations after reopen: %v at %d", items, v)
	}
	if ks, _ := d.SigningKeys(ctx); len(ks) != 1 || string(ks[0].Private) != "priv" {
		t.Fatalf("signing keys after reopen: %+v", ks)
	}
	if o, err := d.TaskOwnerOf(ctx, "T"); err != nil || o.Owner != "o" {
		t.Fatalf("task owner after reopen: %+v %v", o, err)
	}
	if p, err := d.Pending(ctx, "q"); err != nil || p.Subject != "s" {
		t.Fatalf("pending after reopen: %+v %v", p, err)
	}
	if log, _ := d.AuditLog(ctx, time.Time{}, 0); len(log) != 1 {
		t.Fatalf("audit after reopen: %+v", log)
	}
	v, err := d.Put(ctx, mandatev1.PolicyTypeURL, []store.Item{{Name: "p2", Value: []byte("z")}})
	if err != nil || v <= vr {
		t.Fatalf("version after reopen %d, want above %d (%v)", v, vr, err)
	}
}

func TestSecondOpenFails(t *testing.T) {
	dir := t.TempDir()
	d := open(t, dir)
	defer d.Close()
	_, err := Open(context.Background(), dir)
	if err == nil {
		t.Fatal("a second Open of a held database succeeded")
	}
	// The error names the lock and its likely holder, not just "timeout".
	if !errors.Is(err, bolt.ErrTimeout) || !strings.Contains(err.Error(), "is locked by another process") {
		t.Fatalf("second Open: %v", err)
	}
}

// TestLegacyLayoutConverted: a file written before the store seam opens
// with everything in it, and no type's version goes down.
func TestLegacyLayoutConverted(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	db, err := bolt.Open(dir+"/"+FileName, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	pol := &mandatev1.Policy{Name: "p1", Source: []byte("x: 1\n")}
	pb, err := proto.Marshal(pol)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		mk := func(name string) *bolt.Bucket { b, _ := tx.CreateBucket([]byte(name)); return b }
		for _, n := range []string{"revocations", "approvals", "verification_keys", "audit_time"} {
			mk(n)
		}
		if err := mk("policies").Put([]byte("p1"), pb); err != nil {
			return err
		}
		v := mk("versions")
		for typeURL, n := range map[string]uint64{mandatev1.PolicyTypeURL: 7, mandatev1.RevocationTypeURL: 41} {
			var b [8]byte
			binary.BigEndian.PutUint64(b[:], n)
			if err := v.Put([]byte(typeURL), b[:]); err != nil {
				return err
			}
		}
		sk, _ := json.Marshal(store.SigningKey{ID: "k1", Algorithm: "EdDSA", Private: []byte("secret"), CreatedAt: base})
		if err := mk("signing_keys").Put([]byte("k1"), sk); err != nil {
			return err
		}
		a := mk("audit")
		for i, off := range []time.Duration{0, 2 * time.Hour, time.Hour} {
			e, _ := json.Marshal(store.AuditEntry{Seq: uint64(i + 1), Time: base.Add(off), Actor: "a", Action: "act", Object: strconv.Itoa(i)})
			var k [8]byte
			binary.BigEndian.PutUint64(k[:], uint64(i+1))
			if err := a.Put(k[:], e); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = db.Close()

	d := open(t, dir)
	defer d.Close()
	items, vp, err := d.List(ctx, mandatev1.PolicyTypeURL)
	if err != nil || len(items) != 1 || string(items[0].Value) != string(pb) {
		t.Fatalf("policies: %v, %v", items, err)
	}
	_, vr, _ := d.List(ctx, mandatev1.RevocationTypeURL)
	if vp < 7 || vr < 41 {
		t.Fatalf("versions went down: policy %d (was 7), revocation %d (was 41)", vp, vr)
	}
	if ks, err := d.SigningKeys(ctx); err != nil || len(ks) != 1 || string(ks[0].Private) != "secret" {
		t.Fatalf("signing keys: %+v %v", ks, err)
	}
	log, err := d.AuditLog(ctx, base.Add(90*time.Minute), 0)
	if err != nil || len(log) != 1 || log[0].Object != "1" || log[0].Seq != 2 {
		t.Fatalf("audit since +90m: %+v %v", log, err)
	}
	if err := d.AppendAudit(ctx, store.AuditEntry{Action: "next"}); err != nil {
		t.Fatal(err)
	}
	all, _ := d.AuditLog(ctx, time.Time{}, 0)
	if len(all) != 4 || all[3].Seq != 4 {
		t.Fatalf("audit after conversion: %+v", all)
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
	if len(acked) < 10 {
		t.Fatalf("child acknowledged only %d writes", len(acked))
	}
	d := open(t, dir)
	defer d.Close()
	items, _, err := d.List(context.Background(), mandatev1.RevocationTypeURL)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]string{}
	for _, it := range items {
		have[it.Name] = string(it.Value)
	}
	for _, name := range acked {
		if have[name] != "value-"+name {
			t.Fatalf("acknowledged write %s lost after kill -9 (%d acked, %d stored)", name, len(acked), len(items))
		}
	}
	log, err := d.AuditLog(context.Background(), time.Time{}, 1<<20)
	if err != nil || len(log) < len(acked) {
		t.Fatalf("audit entries %d, acknowledged writes %d: %v", len(log), len(acked), err)
	}
}

func killHelper(dir string) {
	d, err := Open(context.Background(), dir)
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(2)
	}
	// The kill is armed once enough writes were acknowledged (a loaded
	// machine must not turn this into "too few writes"), and then lands
	// at an arbitrary point of the writes that follow.
	arm := func() {
		go func() {
			time.Sleep(50 * time.Millisecond)
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}()
	}
	for i := 0; ; i++ {
		name := fmt.Sprintf("r%06d", i)
		if _, err := d.Put(context.Background(), mandatev1.RevocationTypeURL, []store.Item{{Name: name, Value: []byte("value-" + name)}},
			store.AuditEntry{Actor: "spiffe://x/y", Action: "revoke", Object: name}); err != nil {
			fmt.Println("error:", err)
			continue
		}
		// Unbuffered: the parent sees the line as soon as the write returned.
		_, _ = os.Stdout.WriteString("ok " + name + "\n")
		if i == 19 {
			arm()
		}
	}
}

// BenchmarkAuditLog: 100k entries; the cost follows the entries returned.
func BenchmarkAuditLog(b *testing.B) {
	ctx := context.Background()
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	d := open(b, b.TempDir())
	defer d.Close()
	const n, batch = 100_000, 1000
	for i := 0; i < n; i += batch {
		es := make([]store.AuditEntry, batch)
		for j := range es {
			es[j] = store.AuditEntry{Time: base.Add(time.Duration(i+j) * time.Second), Actor: "spiffe://example.org/mandate/operator",
				Action: "revoke", Object: "revocation/r-" + strconv.Itoa(i+j)}
		}
		if err := d.AppendAudit(ctx, es...); err != nil {
			b.Fatal(err)
		}
	}
	for _, bc := range []struct {
		name  string
		since time.Duration
	}{{"last10", (n - 10) * time.Second}, {"last1000", (n - 1000) * time.Second}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := d.AuditLog(ctx, base.Add(bc.since), 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
