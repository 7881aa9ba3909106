package policies

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const header = "apiVersion: mandate.dev/v1\nkind: Policy\n"

func TestValidationErrors(t *testing.T) {
	rule := func(body string) string {
		return header + "metadata: {name: p1}\nspec:\n  rules:\n    - name: r1\n" + body
	}
	tests := []struct {
		name string
		doc  string
		want []string // substrings of the error
	}{
		{"unknown field", rule("      effect: allow\n      subjects: [\"spiffe://example.org/a\"]\n      subject: x\n"),
			[]string{"f.yaml:9:7: field subject not found", "  9 |       subject: x\n    |       ^"}},
		{"duplicate key", rule("      effect: allow\n      effect: deny\n      subjects: [\"spiffe://example.org/a\"]\n"),
			[]string{"f.yaml", "already defined"}},
		{"bad apiVersion", "apiVersion: v2\nkind: Policy\nmetadata: {name: p1}\nspec: {rules: [{name: r, effect: allow, subjects: [\"spiffe://example.org/a\"]}]}\n",
			[]string{`f.yaml: policy "p1": apiVersion: must be "mandate.dev/v1"`}},
		{"bad kind", "apiVersion: mandate.dev/v1\nkind: PolicyTest\nmetadata: {name: p1}\nspec: {rules: [{name: r, effect: allow, subjects: [\"spiffe://example.org/a\"]}]}\n",
			[]string{`policy "p1": kind: must be "Policy"`}},
		{"bad policy name", header + "metadata: {name: P_1}\nspec: {rules: [{name: r, effect: allow, subjects: [\"spiffe://example.org/a\"]}]}\n",
			[]string{`policy "P_1": metadata.name: "P_1" must be a DNS label`}},
		{"no rules", header + "metadata: {name: p1}\nspec: {rules: []}\n",
			[]string{`policy "p1": spec.rules: a policy needs at least one rule`}},
		{"bad mode", header + "metadata: {name: p1}\nspec: {mode: audit, rules: [{name: r, effect: allow, subjects: [\"spiffe://example.org/a\"]}]}\n",
			[]string{`policy "p1": spec.mode: must be`}},
		{"bad effect", rule("      effect: permit\n      subjects: [\"spiffe://example.org/a\"]\n"),
			[]string{`f.yaml: policy "p1": rule "r1": effect: must be allow, deny or step_up, got "permit"`}},
		{"no subjects", rule("      effect: allow\n"),
			[]string{`rule "r1": subjects: at least one SPIFFE ID pattern is required`}},
		{"subject not spiffe", rule("      effect: allow\n      subjects: [\"https://example.org/a\"]\n"),
			[]string{`rule "r1": subjects[0]: pattern "https://example.org/a": must start with spiffe://`}},
		{"uppercase trust domain", rule("      effect: allow\n      subjects: [\"spiffe://a\", \"spiffe://Example.org/a\"]\n"),
			[]string{`rule "r1": subjects[1]: pattern "spiffe://Example.org/a": trust domain "Example.org"`}},
		{"wildcard trust domain", rule("      effect: allow\n      subjects: [\"spiffe://*/a\"]\n"),
			[]string{`subjects[0]: pattern "spiffe://*/a": trust domain`}},
		{"dotdot segment", rule("      effect: allow\n      subjects: [\"spiffe://example.org/a/../b\"]\n"),
			[]string{`subjects[0]: pattern "spiffe://example.org/a/../b": path segment ".." is not allowed`}},
		{"inner doublestar", rule("      effect: allow\n      subjects: [\"spiffe://example.org/**/b\"]\n"),
			[]string{`subjects[0]: pattern: invalid pattern`}},
		{"bad destination", rule("      effect: allow\n      subjects: [\"spiffe://example.org/a\"]\n      destinations: [\"svc\"]\n"),
			[]string{`rule "r1": destinations[0]: pattern "svc": must start with spiffe://`}},
		{"bad host", rule("      effect: allow\n      subjects: [\"spiffe://example.org/a\"]\n      hosts: [\"Tickets:80\"]\n"),
			[]string{`rule "r1": hosts[0]: "Tickets:80" must be a lowercase host name`}},
		{"empty intent", rule("      effect: allow\n      subjects: [\"spiffe://example.org/a\"]\n      intents: [\"\"]\n"),
			[]string{`rule "r1": intents[0]: "" must be`}},
		{"lowercase method", rule("      effect: allow\n      subjects: [\"spiffe://example.org/a\"]\n      actions: [{methods: [get]}]\n"),
			[]string{`rule "r1": actions[0].methods[0]: "get" must be an upper-case token`}},
		{"relative path", rule("      effect: allow\n      subjects: [\"spiffe://example.org/a\"]\n      actions: [{paths: [\"tickets/*\"]}]\n"),
			[]string{`rule "r1": actions[0].paths[0]: pattern "tickets/*": must start with '/'`}},
		{"bad grpc", rule("      effect: allow\n      subjects: [\"spiffe://example.org/a\"]\n      actions: [{grpc: [\"tickets.v1.Tickets\"]}]\n"),
			[]string{`rule "r1": actions[0].grpc[0]: "tickets.v1.Tickets" must be pkg.Service/Method`}},
		{"http and grpc", rule("      effect: allow\n      subjects: [\"spiffe://example.org/a\"]\n      actions: [{methods: [GET], grpc: [\"a.B/C\"]}]\n"),
			[]string{`rule "r1": actions[0]: an action is HTTP`}},
		{"empty action", rule("      effect: allow\n      subjects: [\"spiffe://example.org/a\"]\n      actions: [{}]\n"),
			[]string{`rule "r1": actions[0]: an action needs methods, paths, grpc or mcp`}},
		{"duplicate rule", header + "metadata: {name: p1}\nspec:\n  rules:\n    - {name: r1, effect: allow, subjects: [\"spiffe://example.org/a\"]}\n    - {name: r1, effect: deny, subjects: [\"spiffe://example.org/a\"]}\n",
			[]string{`policy "p1": rule "r1": name: duplicate rule name`}},
		{"bad rule name", strings.Replace(rule("      effect: allow\n      subjects: [\"spiffe://example.org/a\"]\n"), "name: r1", "name: R 1", 1),
			[]string{`rule "R 1": name:`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("f.yaml", []byte(tt.doc))
			if err == nil {
				t.Fatal("Parse succeeded, want error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

func TestCompileErrors(t *testing.T) {
	pol := func(name, file, when string) *Policy {
		return &Policy{APIVersion: APIVersion, Kind: KindPolicy, SourceFile: file,
			Metadata: Metadata{Name: name},
			Spec: Spec{Rules: []Rule{{Name: "r1", Effect: "allow",
				Subjects: []string{"spiffe://example.org/a"}, When: when}}}}
	}
	tests := []struct {
		name string
		ps   []*Policy
		want []string
	}{
		{"duplicate policy", []*Policy{pol("p", "a.yaml", ""), pol("p", "b.yaml", "")},
			[]string{`b.yaml: policy "p": metadata.name: duplicate policy name (also defined in a.yaml)`}},
		{"cel syntax", []*Policy{pol("p", "a.yaml", "task ==")},
			[]string{`a.yaml: policy "p": rule "r1": when: ERROR`}},
		{"cel not bool", []*Policy{pol("p", "a.yaml", "task")},
			[]string{`rule "r1": when: must return bool, returns string`}},
		{"cel unknown variable", []*Policy{pol("p", "a.yaml", "request.body == ''")},
			[]string{`rule "r1": when:`, "undeclared reference"}},
		{"cel unknown mandate field", []*Policy{pol("p", "a.yaml", "mandate != null && mandate.scope == ''")},
			[]string{`rule "r1": when: mandate has no field "scope"`}},
		{"cel upper-case header", []*Policy{pol("p", "a.yaml", `request.headers["X-Ticket"] == task`)},
			[]string{`rule "r1": when: header "X-Ticket" is never present`}},
		{"cel too long", []*Policy{pol("p", "a.yaml", strings.Repeat("true && ", 1000)+"true")},
			[]string{`rule "r1": when:`}},
		{"nil policy", []*Policy{nil}, []string{"nil policy"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Compile(tt.ps)
			if err == nil {
				t.Fatal("Compile succeeded, want error")
			}
			var ve *ValidationError
			if tt.name != "nil policy" && !errors.As(err, &ve) {
				t.Errorf("error %T is not a *ValidationError", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

func TestParseMultiDoc(t *testing.T) {
	doc1 := header + "metadata: {name: one}\nspec: {rules: [{name: r, effect: allow, subjects: [\"spiffe://example.org/a\"]}]}\n"
	doc2 := "# second\n" + header + "metadata: {name: two}\nspec: {mode: dry_run, rules: [{name: r, effect: deny, subjects: [\"spiffe://example.org/a\"]}]}\n"
	data := "# leading comment\n---\n" + doc1 + "---\n" + doc2 + "---\n# trailing empty document\n"
	ps, err := Parse("multi.yaml", []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 || ps[0].Metadata.Name != "one" || ps[1].Metadata.Name != "two" {
		t.Fatalf("parsed %d policies: %+v", len(ps), ps)
	}
	if string(ps[0].Source) != doc1 || string(ps[1].Source) != doc2 {
		t.Errorf("sources not kept exactly:\n%q\n%q", ps[0].Source, ps[1].Source)
	}
	if ps[1].SourceFile != "multi.yaml" || ps[1].Spec.Mode != ModeDryRun {
		t.Errorf("policy 2: file %q mode %q", ps[1].SourceFile, ps[1].Spec.Mode)
	}
	// An error in the second document reports its line in the file.
	bad := doc1 + "---\n" + header + "metadata: {name: two}\nbogus: 1\n"
	_, err = Parse("multi.yaml", []byte(bad))
	if err == nil || !strings.Contains(err.Error(), "multi.yaml:9:1: field bogus") {
		t.Errorf("error %v does not locate line 9 of the file (in the document at line 6)", err)
	}
	// Two documents glued without a marker line are not allowed either.
	if _, err := Parse("x.yaml", []byte("--- "+doc1)); err != nil {
		t.Errorf("content after --- marker: %v", err)
	}
	if _, err := Parse("x.yaml", []byte("null\n")); err == nil {
		t.Error("null document accepted")
	}
}

func TestLoadDir(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pol := func(name string) string {
		return header + "metadata: {name: " + name + "}\nspec: {rules: [{name: r, effect: allow, subjects: [\"spiffe://example.org/" + name + "\"]}]}\n"
	}
	write("b.yaml", pol("b"))
	write("a/z.yml", pol("z"))
	write("a/a.yaml", pol("a"))
	write("b_test.yaml", "not: a policy")
	write("b.test.yml", "not: a policy")
	write(".hidden.yaml", "not: a policy")
	write(".git/x.yaml", "not: a policy")
	write("notes.txt", "not: a policy")
	set, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range set.Policies() {
		names = append(names, p.Metadata.Name)
	}
	if got := strings.Join(names, ","); got != "a,z,b" {
		t.Errorf("loaded %s, want a,z,b (sorted paths)", got)
	}
	if set.Len() != 3 {
		t.Errorf("Len = %d", set.Len())
	}
	files, err := TestFiles(dir)
	if err != nil || len(files) != 2 {
		t.Errorf("TestFiles = %v, %v", files, err)
	}
	// Version is stable across loads and changes with content.
	set2, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if set.Version() != set2.Version() || len(set.Version()) != 32 {
		t.Errorf("versions %q %q", set.Version(), set2.Version())
	}
	write("b.yaml", pol("b")+"# changed\n")
	set3, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if set3.Version() == set.Version() {
		t.Error("version did not change with content")
	}
	// A broken file fails the whole load, naming the file.
	write("c.yaml", pol("c")+"extra: 1\n")
	if _, err := LoadDir(dir); err == nil || !strings.Contains(err.Error(), "c.yaml") {
		t.Errorf("LoadDir error %v does not name c.yaml", err)
	}
	if _, err := LoadFile(filepath.Join(dir, "missing.yaml")); err == nil {
		t.Error("LoadFile of a missing file succeeded")
	}
}

func TestExamplesLoad(t *testing.T) {
	set, err := LoadDir("examples")
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Policies()) != 5 {
		t.Errorf("examples hold %d policies, want 5", len(set.Policies()))
	}
	want := []string{"x-refund-amount", "x-ticket-id"}
	if got := set.HeaderKeys(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("HeaderKeys = %v, want %v", got, want)
	}
	if set.ReadsAllHeaders() {
		t.Error("examples read all headers")
	}
}
