package spire

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestCreateEntryRejectsBadInput(t *testing.T) {
	e := &Env{td: spiffeid.RequireTrustDomainFromString("example.org"), binDir: "/nonexistent"}
	tests := []struct {
		name, id string
		sel      []string
	}{
		{"not a spiffe id", "https://example.org/a", []string{"unix:uid:0"}},
		{"other trust domain", "spiffe://evil.org/a", []string{"unix:uid:0"}},
		{"no selectors", "spiffe://example.org/a", nil},
		{"bad selector", "spiffe://example.org/a", []string{"nocolon"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := e.CreateEntry(context.Background(), tc.id, tc.sel...); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestFindBinariesAndPathSelector(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(EnvBinDir, dir)
	if _, err := FindBinaries(); err == nil {
		t.Fatal("empty directory accepted")
	}
	for _, n := range []string{"spire-server", "spire-agent"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := FindBinaries(); err != nil || got != dir {
		t.Fatalf("FindBinaries = %q, %v", got, err)
	}
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(filepath.Join(dir, "spire-agent"), link); err != nil {
		t.Fatal(err)
	}
	sel, err := PathSelector(link)
	real, _ := filepath.EvalSymlinks(filepath.Join(dir, "spire-agent"))
	if err != nil || sel != "unix:path:"+real {
		t.Fatalf("PathSelector = %q, %v", sel, err)
	}
}

func TestBuilderRejectsBadNames(t *testing.T) {
	b := NewBuilder(t)
	for _, name := range []string{"", "a/b", "..", ".hidden"} {
		if _, err := b.Build(context.Background(), "example.com/x", name); err == nil || !strings.Contains(err.Error(), "bad name") {
			t.Fatalf("name %q: %v", name, err)
		}
	}
}
