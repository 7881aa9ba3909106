package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSIGHUPReloadsPolicyDir: a SIGHUP reloads the policy directory, says
// so in the log, and never stops the server (its default action would).
func TestSIGHUPReloadsPolicyDir(t *testing.T) {
	dir := t.TempDir()
	pdir := filepath.Join(dir, "policies")
	if err := os.Mkdir(pdir, 0o755); err != nil {
		t.Fatal(err)
	}
	policy := "apiVersion: mandate.dev/v1\nkind: Policy\nmetadata: {name: p}\nspec:\n  rules:\n    - {name: r, effect: allow, subjects: [\"spiffe://example.org/a\"]}\n"
	if err := os.WriteFile(filepath.Join(pdir, "p.yaml"), []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	addrFile := filepath.Join(dir, "addrs.json")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logFile, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	logged := func() string { b, _ := os.ReadFile(logFile.Name()); return string(b) }
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--plaintext", "--policy-dir", pdir, "--listen", "127.0.0.1:0", "--metrics-addr", "",
			"--addr-file", addrFile, "--decision-log", "off"}, io.Discard, logFile)
	}()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !cond() {
			select {
			case err := <-done:
				t.Fatalf("run exited while waiting for %s: %v\n%s", what, err, logged())
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %s; stderr:\n%s", what, logged())
			}
		}
	}
	waitFor("addr file", func() bool { _, err := os.Stat(addrFile); return err == nil })
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor("SIGHUP reload", func() bool {
		s := logged()
		return strings.Contains(s, "SIGHUP: reloading the policy directory") && strings.Count(s, `"msg":"policies loaded"`) >= 2
	})
	select {
	case err := <-done:
		t.Fatalf("run exited after SIGHUP: %v", err)
	default:
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run after cancel: %v", err)
	}
}
