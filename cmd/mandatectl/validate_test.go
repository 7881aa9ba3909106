package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestValidateByKind: validate checks each file by its kind, and test
// takes a test file and the policies beside it.
func TestValidateByKind(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	issuanceFile := write("issuance.yaml", `apiVersion: mandate.dev/v1
kind: IssuancePolicy
rules:
  - name: r
    callers: ["spiffe://example.org/orchestrator"]
    subjects: ["spiffe://example.org/agent/*"]
    intents: ["triage"]
    maxTTL: 10m
    scope:
      paths: ["/tickets/**"]
`)
	badIssuance := write("bad-issuance.yaml", "apiVersion: mandate.dev/v1\nkind: IssuancePolicy\nrules:\n  - name: r\n    bogus: 1\n")
	unknown := write("other.yaml", "apiVersion: v1\nkind: ConfigMap\n")
	ex := "../../policies/examples"
	tests := []struct {
		name  string
		args  []string
		code  int
		wants []string
	}{
		{"policy file", []string{"validate", ex + "/support.yaml"}, 0, []string{"1 policies"}},
		{"test file", []string{"validate", ex + "/support_test.yaml"}, 0, []string{"test suites", "cases"}},
		{"directory", []string{"validate", ex}, 0, []string{"policies", "test suites"}},
		{"issuance policy", []string{"validate", issuanceFile}, 0, []string{"issuance policy"}},
		{"bad issuance policy", []string{"validate", badIssuance}, 1, []string{"INVALID"}},
		{"unknown kind", []string{"validate", unknown}, 1, []string{`kind "ConfigMap"`}},
		{"test FILE uses the policies beside it", []string{"test", ex + "/support_test.yaml", "-v"}, 0, []string{"PASS", "0 failed"}},
		{"test a policy file", []string{"test", ex + "/support.yaml"}, 2, []string{"not a PolicyTest"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, tt.args...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d\n%s%s", code, tt.code, out, errOut)
			}
			for _, w := range tt.wants {
				if !strings.Contains(out+errOut, w) {
					t.Errorf("output lacks %q:\n%s%s", w, out, errOut)
				}
			}
		})
	}
}
