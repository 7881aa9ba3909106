package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadPolicyFilesNamesByMetadata: a policy is stored under its
// metadata.name, whatever its file is called; the path is metadata.
func TestReadPolicyFilesNamesByMetadata(t *testing.T) {
	doc := func(name string) string {
		return "apiVersion: mandate.dev/v1\nkind: Policy\nmetadata: {name: " + name + "}\nspec:\n  rules:\n    - {name: r, effect: allow, subjects: [\"spiffe://example.org/a\"]}\n"
	}
	dir := t.TempDir()
	write := func(name, body string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	support := write("support.yaml", doc("support-agent"))
	ps, err := readPolicyFiles([]string{support})
	if err != nil || len(ps) != 1 || ps[0].GetName() != "support-agent" || ps[0].GetSourceFile() != filepath.ToSlash(support) {
		t.Fatalf("readPolicyFiles = %v, %v; want support-agent from %s", ps, err, support)
	}
	other := write("copy.yaml", doc("support-agent"))
	if _, err := readPolicyFiles([]string{support, other}); err == nil || !strings.Contains(err.Error(), `both define policy "support-agent"`) {
		t.Fatalf("two files, one name: %v", err)
	}
	two := write("two.yaml", doc("a")+"---\n"+doc("b"))
	if _, err := readPolicyFiles([]string{two}); err == nil || !strings.Contains(err.Error(), "one policy per file") {
		t.Fatalf("two policies in a file: %v", err)
	}
	bad := write("bad.yaml", "kind: Policy\nmetadata: [\n")
	if _, err := readPolicyFiles([]string{bad}); err == nil {
		t.Fatal("invalid YAML: no error")
	}
}
