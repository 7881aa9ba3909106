package doctest

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const sample = "# Doc\n" + // 1
	"\n" + // 2
	"<!-- doctest: walkthrough first -->\n" + // 3
	"```sh\n" + // 4
	"echo setup\n" + // 5
	"```\n" + // 6
	"```console\n" + // 7
	"$ echo a \\\n" + // 8
	"    b\n" + // 9
	"a b\n" + // 10
	"$ cat > f <<'EOF'\n" + // 11
	"x\n" + // 12
	"EOF\n" + // 13
	"```\n" + // 14
	"<!-- doctest: skip not this -->\n" + // 15
	"```sh\n" + // 16
	"exit 1\n" + // 17
	"```\n" + // 18
	"```yaml\n" + // 19
	"a: b\n" + // 20
	"```\n" + // 21
	"<!-- doctest: walkthrough second -->\n" + // 22
	"```console\n" + // 23
	"$ cat f\n" + // 24
	"```\n" // 25

func TestParse(t *testing.T) {
	wts, err := Parse("doc.md", sample)
	if err != nil {
		t.Fatal(err)
	}
	if len(wts) != 2 || wts[0].Name != "first" || wts[1].Name != "second" {
		t.Fatalf("walkthroughs = %+v", wts)
	}
	want := []Step{
		{File: "doc.md", Line: 5, Kind: Shell, Command: "echo setup"},
		{File: "doc.md", Line: 8, Kind: Console, Command: "echo a \\\n    b", Want: []string{"a b"}, WantLine: 10},
		{File: "doc.md", Line: 11, Kind: Console, Command: "cat > f <<'EOF'\nx\nEOF", WantLine: 14},
	}
	if !reflect.DeepEqual(wts[0].Steps, want) {
		t.Fatalf("steps = %#v\nwant %#v", wts[0].Steps, want)
	}
	if _, err := Parse("doc.md", "```console\noutput first\n```\n"); err == nil {
		t.Fatal("output before a command: no error")
	}
	if _, err := Parse("doc.md", "```sh\necho\n"); err == nil {
		t.Fatal("unterminated block: no error")
	}
}

func TestMatch(t *testing.T) {
	tests := []struct {
		want, got []string
		ok        bool
	}{
		{[]string{"ALLOW (2.453ms)"}, []string{"ALLOW (58.9ms)"}, true},
		{[]string{"ALLOW (2.453ms)"}, []string{"DENY 403 (2.453ms)"}, false},
		{[]string{"revocation r-e583b4dc5d8021da until 2026-11-22T00:51:30Z"}, []string{"revocation r-ca50ff681dbaed66 until 2026-12-01T23:17:28Z"}, true},
		{[]string{"id:        N_DKK1ZUFHasf6vouO2pmQ"}, []string{"id: BSO9_h30P_1dOObaKmdqyA"}, true},
		{[]string{"policy/require-mandates-dry-run added"}, []string{"policy/require-mandates-dry-run added"}, true},
		{[]string{"policy/require-mandates-dry-run added"}, []string{"policy/require-mandates-dry-ru added"}, false},
		{[]string{"a", "...", "z"}, []string{"a", "b", "c", "z"}, true},
		{[]string{"a", "..."}, []string{"a"}, true},
		{[]string{"a", "...", "z"}, []string{"a", "b"}, false},
		{[]string{"a"}, []string{"a", "extra"}, false},
		{[]string{"version 1"}, []string{"version 2"}, true}, // store versions count timing-dependent writes
		{[]string{"policy=1"}, []string{"policy=2"}, false},
	}
	for _, tt := range tests {
		if got := Match(tt.want, tt.got); got != tt.ok {
			t.Errorf("Match(%q, %q) = %v, want %v", tt.want, tt.got, got, tt.ok)
		}
	}
}

func TestRunAndUpdate(t *testing.T) {
	if _, err := os.Stat("/bin/bash"); err != nil {
		t.Skip("no bash")
	}
	repo := t.TempDir()
	if err := os.WriteFile(filepath.Join(repo, "data.txt"), []byte("from the repo\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	doc := filepath.Join(t.TempDir(), "doc.md")
	text := "```console\n$ X=$(echo hi)\n$ echo $X\nhi\n$ cat data.txt\nstale\n$ false\n```\n```sh\nfalse\n```\n```console\n$ echo never\nnever\n```\n"
	if err := os.WriteFile(doc, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	wts, err := Parse("doc.md", text)
	if err != nil {
		t.Fatal(err)
	}
	results, err := Runner{Repo: repo}.Run(t.Context(), t.TempDir(), wts[0])
	if err == nil || !strings.Contains(err.Error(), "shell") {
		t.Fatalf("a failing sh block: err = %v", err)
	}
	var oks []bool
	for _, r := range results {
		oks = append(oks, r.OK())
	}
	// X=... ok, echo $X ok (variables carry over), cat: wrong output, false: ok
	// (console exit codes are not checked), sh false: fails, echo never: not reached.
	if want := []bool{true, true, false, true, false, false}; !reflect.DeepEqual(oks, want) {
		t.Fatalf("OK() = %v, want %v (results %+v)", oks, want, results)
	}
	if results[5].Ran {
		t.Fatal("the step after a failed sh block ran")
	}
	if err := Update(doc, results); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(doc)
	if want := strings.Replace(text, "stale\n", "from the repo\n", 1); string(b) != want {
		t.Fatalf("updated document:\n%s\nwant:\n%s", b, want)
	}
}

func TestNormalize(t *testing.T) {
	for in, want := range map[string]string{
		"approval withdrawn (version 7)":            "approval withdrawn (version <n>)",
		"task=T-42 mandates=2 version=9: done":      "task=T-42 mandates=2 version <n>: done",
		"parent=vp02QZI7lxJ…":                       "parent=<cut>…",
		"id:        abcdefghijklmnopqrsTUV":         "id: <id>",
		"policy/require-mandates-dry-run added":     "policy/require-mandates-dry-run added",
		"DENY 403 (798µs)":                          "DENY 403 (<dur>)",
		"in 59m59s  plaintext:loopback":             "in <dur> plaintext:loopback",
		"drift-df74ab76126afff9-1796165606  task":   "drift-<id>-<n> task",
		"until 2026-12-01T23:09:51Z: task complete": "until <time>: task complete",
		// Random ids whose head looks like a duration, or that hold a
		// run of hex or digits between dashes.
		"kid=4s-ROIxhuX4hY7mOnSuKSClIQirH1fcHW-Ml1fE500c typ=mandate+jwt": "kid=<id> typ=mandate+jwt",
		"(key 1TZ69fFZYB9u2zCsi8a4nOFBu5YUplWS294Ch-l1RTU)":               "(key <id>)",
		"id:        9m-0123456789abcdefAb":                                "id: <id>",
		"id:        Xy-123456789012-abcd":                                 "id: <id>",
	} {
		if got := Normalize(in); got != want {
			t.Errorf("Normalize(%q) = %q, want %q", in, got, want)
		}
	}
}
