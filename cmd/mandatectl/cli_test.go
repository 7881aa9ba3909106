package main

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
)

// TestConventions checks the command-line conventions kubectl, etcdctl
// and OPA users rely on: --help exits 0, usage errors exit 2 with a
// hint, "did you mean", flags after arguments, version and completion.
func TestConventions(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		code  int
		wants []string // in stdout+stderr
	}{
		{"root help", []string{"--help"}, 0, []string{"Available Commands:", "apply", "completion", "version"}},
		{"command help", []string{"revoke", "--help"}, 0, []string{"--subject", "--for", "-f, --filename"}},
		{"help command", []string{"help", "apply"}, 0, []string{"--prune"}},
		{"version", []string{"version"}, 0, []string{"mandatectl ", "go1."}},
		{"--version", []string{"--version"}, 0, []string{"mandatectl "}},
		{"completion bash", []string{"completion", "bash"}, 0, []string{"bash completion"}},
		{"completion zsh", []string{"completion", "zsh"}, 0, []string{"compdef"}},
		{"completion fish", []string{"completion", "fish"}, 0, []string{"complete -c mandatectl"}},
		{"unknown command suggests", []string{"aply"}, 2, []string{`unknown command "aply"`, "Did you mean this?", "apply"}},
		{"unknown flag suggests", []string{"revoke", "--subjet", "x", "--for", "1h"}, 2, []string{"unknown flag: --subjet", "--subject", "--help"}},
		{"one-dash long flag suggests", []string{"get", "policies", "-plaintext"}, 2, []string{"--plaintext"}},
		{"bad flag value", []string{"revoke", "--subject", "x", "--for", "soon"}, 2, []string{"--for"}},
		{"missing argument", []string{"delete"}, 2, []string{"mandatectl delete: want one policy NAME", "mandatectl delete --help"}},
		{"flags after arguments", []string{"validate", "../../policies/examples", "--help"}, 0, []string{"Usage:"}},
		{"test -v after DIR", []string{"test", "../../policies/examples", "-v"}, 0, []string{"PASS", "0 failed"}},
		{"test --format json", []string{"test", "../../policies/examples", "--format", "json"}, 0, []string{`"passed": `, `"failed": 0`, `"pass": true`}},
		{"test --format bad", []string{"test", "../../policies/examples", "--format", "xml"}, 2, []string{"--format"}},
		{"get -o unknown", []string{"get", "policies", "-o", "xml"}, 2, []string{`--output "xml": want table, yaml, json`}},
		{"status -o unknown", []string{"status", "-o", "wide"}, 2, []string{"--output"}},
		{"audit -o unknown", []string{"audit", "-o", "csv"}, 2, []string{"--output"}},
		{"approvals -o unknown", []string{"approvals", "-o", "csv"}, 2, []string{"--output"}},
		{"inspect -o unknown", []string{"inspect", "x", "-o", "csv"}, 2, []string{"--output"}},
		{"audit --limit 0", []string{"audit", "--limit", "0"}, 2, []string{"--limit"}},
		{"no Workload API: hint", []string{"get", "policies"}, 1, []string{"SPIFFE_ENDPOINT_SOCKET", "--workload-api", "--plaintext"}},
	}
	t.Setenv("SPIFFE_ENDPOINT_SOCKET", "")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, tt.args...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.code, out, errOut)
			}
			for _, w := range tt.wants {
				if !strings.Contains(out+errOut, w) {
					t.Errorf("output lacks %q:\n%s%s", w, out, errOut)
				}
			}
			if strings.Count(errOut, "mandatectl delete: mandatectl") > 0 {
				t.Errorf("repeated prefix:\n%s", errOut)
			}
		})
	}
}

func TestSuggestFlags(t *testing.T) {
	root := newRoot(nil, nil)
	cmd, _, err := root.Find([]string{"revoke"})
	if err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]string{"subjet": "subject", "wiat": "wait", "plain": "plaintext", "reason=x": "reason"} {
		got := suggestFlags(cmd.Flags(), in)
		if !strings.Contains(strings.Join(got, ","), want) {
			t.Errorf("suggestFlags(%q) = %q, want %q among them", in, got, want)
		}
	}
	if got := suggestFlags(cmd.Flags(), "zzzzzzzzz"); len(got) != 0 {
		t.Errorf("suggestFlags(zzzzzzzzz) = %q, want none", got)
	}
}

// TestErrorsWithoutRepeatedPrefixes: a server that cannot be reached is
// reported once, as the dial error, without grpc-go's nested "desc ="
// and "transport:" layers.
func TestErrorsWithoutRepeatedPrefixes(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close() // nothing listens there now
	for _, args := range [][]string{
		{"status", "--plaintext", "--addr", addr},
		{"check", "--principal", "spiffe://example.org/a", "--method", "GET", "--path", "/", "--plaintext", "--addr", addr},
	} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), args, &out, &errOut); code == 0 {
			t.Fatalf("%v: exit 0", args)
		}
		msg := errOut.String()
		if !strings.Contains(msg, "unavailable: dial tcp "+addr) || strings.Count(msg, "mandatectl ") != 1 {
			t.Errorf("%v: %q", args, msg)
		}
		for _, layer := range []string{"desc =", "transport:", "rpc error", "Error while dialing"} {
			if strings.Contains(msg, layer) {
				t.Errorf("%v: %q repeats %q", args, msg, layer)
			}
		}
	}
}
