package policydir

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mandate-dev/mandate/internal/testkit"
	"github.com/mandate-dev/mandate/policies"
)

const policyA = `apiVersion: mandate.dev/v1
kind: Policy
metadata: {name: p}
spec:
  rules:
    - {name: a, effect: allow, subjects: ["spiffe://example.org/a"]}
`

func TestReloadKeepsLastGoodSet(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "p.yaml")
	if err := os.WriteFile(file, []byte(policyA), 0o644); err != nil {
		t.Fatal(err)
	}
	var cur atomic.Pointer[policies.Set]
	reg := prometheus.NewRegistry()
	w, err := New(Config{Dir: dir, Apply: func(s *policies.Set) { cur.Store(s) }, Debounce: 20 * time.Millisecond, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Load(); err != nil {
		t.Fatal(err)
	}
	first := cur.Load()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()

	allows := func(s *policies.Set, subject string) bool {
		return s.Evaluate(&policies.Request{Subject: subject, Method: "GET", Path: "/"}).Effect == policies.EffectAllow
	}
	// Writes until a reload lands: the watcher may still be starting.
	edit := func(content string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			select {
			case <-w.Reloaded():
				return
			case <-time.After(200 * time.Millisecond):
			case <-deadline:
				t.Fatal("no reload after editing the policy file")
			}
		}
	}

	// A valid edit is applied.
	edit(strings.Replace(policyA, "spiffe://example.org/a", "spiffe://example.org/b", 1))
	second := cur.Load()
	if second == first || !allows(second, "spiffe://example.org/b") || allows(second, "spiffe://example.org/a") {
		t.Fatal("valid edit not applied")
	}
	// An invalid edit keeps the last good set and shows in the metrics.
	edit("apiVersion: mandate.dev/v1\nkind: Policy\nmetadata: {name: p}\nspec: {rules: [{name: x, effect: maybe}]}\n")
	if cur.Load() != second {
		t.Fatal("an invalid edit replaced the policy set")
	}
	if v := testutil.ToFloat64(w.lastOK); v != 0 {
		t.Fatalf("last_reload_success = %v after a bad edit", v)
	}
	if v := testutil.ToFloat64(w.reloads.WithLabelValues("failure")); v < 1 {
		t.Fatalf("failure reloads = %v", v)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Config{Apply: func(*policies.Set) {}}); err == nil {
		t.Error("accepted empty Dir")
	}
	if _, err := New(Config{Dir: "x"}); err == nil {
		t.Error("accepted nil Apply")
	}
	w, _ := New(Config{Dir: t.TempDir() + "/missing", Apply: func(*policies.Set) {}})
	if err := w.Load(); err == nil {
		t.Error("loaded a missing directory")
	}
}

// TestChangeBeforeRunIsSeen: a file changed after the first Load and
// before the watch began (a replica's address file is written before its
// parts start) is loaded when the watch begins, not at the next change.
func TestChangeBeforeRunIsSeen(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "p.yaml")
	if err := os.WriteFile(file, []byte(policyA), 0o644); err != nil {
		t.Fatal(err)
	}
	var cur atomic.Pointer[policies.Set]
	w, err := New(Config{Dir: dir, Apply: func(s *policies.Set) { cur.Store(s) }, Debounce: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Load(); err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(policyA, "spiffe://example.org/a", "spiffe://example.org/b", 1)
	if err := os.WriteFile(file, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	testkit.WaitUntil(t, "the edit made before Run applied", func() bool {
		return cur.Load().Evaluate(&policies.Request{Subject: "spiffe://example.org/b", Method: "GET", Path: "/"}).Effect == policies.EffectAllow
	})
}
