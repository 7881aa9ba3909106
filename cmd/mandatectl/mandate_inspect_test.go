package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/authz/mandate"
)

func TestInspect(t *testing.T) {
	kid, pub, priv, err := mandate.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := mandate.NewSigner(kid, priv, defCPID)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	parent := &mandate.Claims{Subject: "spiffe://example.org/agent/a", Audience: "mandate", IssuedAt: now.Unix(), NotBefore: now.Unix(),
		Expiry: now.Add(10 * time.Minute).Unix(), Task: "t1", Intent: "triage", Scope: mandate.Scope{Paths: []string{"/tickets/**"},
			MCP: &mandate.MCPScope{Methods: []string{"tools/list", "tools/call"}, Tools: []string{"github.*"}}}}
	if _, err := s.Sign(parent); err != nil {
		t.Fatal(err)
	}
	if _, err := mandate.Delegate(parent, "spiffe://example.org/agent/b", mandate.Scope{Paths: []string{"/tickets/1"}}, time.Minute, "triage", 3, now); err == nil {
		t.Fatal("a delegation dropping the MCP limit was allowed")
	}
	child, err := mandate.Delegate(parent, "spiffe://example.org/agent/b", mandate.Scope{Paths: []string{"/tickets/1"},
		MCP: &mandate.MCPScope{Methods: []string{"tools/call"}, Tools: []string{"github.list_issues"}}}, time.Minute, "triage", 3, now)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := s.Sign(child)
	if err != nil {
		t.Fatal(err)
	}
	keys, _ := json.Marshal([]map[string]any{{"kid": kid, "public_key": []byte(pub)}})
	kf := filepath.Join(t.TempDir(), "keys.json")
	if err := os.WriteFile(kf, keys, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		args  []string
		code  int
		wants []string
	}{
		{"decode only", []string{"inspect", tok}, 0, []string{"held by spiffe://example.org/agent/a", "depth 1", "/tickets/1", "not verified",
			"mcp:          methods tools/call; tools github.list_issues; resources (none)"}},
		{"verify", []string{"inspect", tok, "--keys", kf}, 0, []string{"verification: OK"}},
		{"holder", []string{"inspect", tok, "--keys", kf, "--holder", "spiffe://example.org/agent/a"}, 3, []string{"mandate_wrong_holder"}},
		{"tampered", []string{"inspect", flipSignatureChar(tok), "--keys", kf}, 3, []string{"INVALID (mandate_bad_signature)"}},
		{"garbage", []string{"inspect", "not-a-token"}, 1, nil},
		{"json", []string{"inspect", tok, "-o", "json"}, 0, []string{`"verification": "not verified"`, `"sub": "spiffe://example.org/agent/a"`, `"alg": "EdDSA"`}},
		{"yaml verified", []string{"inspect", tok, "--keys", kf, "-o", "yaml"}, 0, []string{"verification: OK", "sub: spiffe://example.org/agent/a"}},
		{"usage", []string{"inspect"}, 2, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			if code := run(context.Background(), tt.args, &out, &errb); code != tt.code {
				t.Fatalf("exit %d, want %d\n%s%s", code, tt.code, out.String(), errb.String())
			}
			for _, w := range tt.wants {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}

func TestMandateCommandsUsage(t *testing.T) {
	for _, args := range [][]string{{"issue", "--subject", "spiffe://example.org/a"}, {"delegate"}, {"complete"}, {"approve"}, {"deny"}} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), args, &out, &errb); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}

// flipSignatureChar changes one character well inside the token's signature
// to a different one (a fixed replacement is a no-op when the token already
// ends with it).
func flipSignatureChar(tok string) string {
	i := len(tok) - 10
	c := byte('A')
	if tok[i] == c {
		c = 'B'
	}
	return tok[:i] + string(c) + tok[i+1:]
}
