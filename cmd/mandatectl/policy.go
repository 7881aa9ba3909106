package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/spf13/pflag"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/mandate-dev/mandate/cp/drift"
	"github.com/mandate-dev/mandate/cp/issuance"
	"github.com/mandate-dev/mandate/policies"
	"github.com/mandate-dev/mandate/policies/policytest"
)

func policyCommands() []command {
	return []command{
		{"validate DIR|FILE...", "check policy files", validateCmd},
		{"test DIR|FILE", "run policy test cases (of a directory, or of one test file against the policies beside it)", testCmd},
		{"check", "send one Envoy-shaped CheckRequest to mandate-authz and print the decision", checkCmd},
	}
}

// kindOf returns the kind: of the first YAML document that names one
// ("" when none does).
func kindOf(data []byte) string {
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "kind:"); ok {
			v, _, _ = strings.Cut(v, "#")
			return strings.Trim(strings.TrimSpace(v), `"'`)
		}
	}
	return ""
}

// validatePath checks a directory (its policies and policy tests) or a
// file by its kind, and returns the summary line.
func validatePath(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if fi.IsDir() {
		set, err := policies.LoadDir(path)
		if err != nil {
			return "", err
		}
		suites, err := policytest.LoadDir(path)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%d policies, %d rules, version %s; %d test suites, %d cases", len(set.Policies()), set.Len(), set.Version(),
			len(suites), countCases(suites)), nil
	}
	if fi.Size() > maxPolicyFile {
		return "", fmt.Errorf("%d bytes exceeds %d", fi.Size(), maxPolicyFile)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	switch k := kindOf(data); k {
	case "Policy":
		set, err := policies.LoadFile(path)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%d policies, %d rules, version %s", len(set.Policies()), set.Len(), set.Version()), nil
	case "PolicyTest":
		suites, err := policytest.LoadFile(path)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%d test suites, %d cases", len(suites), countCases(suites)), nil
	case "IssuancePolicy":
		if _, err := issuance.Parse(path, data); err != nil {
			return "", err
		}
		return "issuance policy", nil
	case "DriftPolicy":
		rules, err := drift.ParsePolicy(path, data)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("drift policy, %d rules", len(rules)), nil
	case "":
		return "", errors.New("no kind: want Policy, PolicyTest, IssuancePolicy or DriftPolicy")
	default:
		return "", fmt.Errorf("kind %q: want Policy, PolicyTest, IssuancePolicy or DriftPolicy", k)
	}
}

func countCases(suites []*policytest.Suite) int {
	n := 0
	for _, s := range suites {
		n += len(s.Cases)
	}
	return n
}

func validateCmd(_ *pflag.FlagSet) runFunc {
	return runValidate
}

func runValidate(_ context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef("want at least one DIR or FILE")
	}
	failed := false
	for _, p := range args {
		summary, err := validatePath(p)
		if err != nil {
			fmt.Fprintf(stderr, "INVALID %s\n  %s\n", p, strings.ReplaceAll(err.Error(), "\n", "\n  "))
			failed = true
			continue
		}
		fmt.Fprintf(stdout, "ok      %s: %s\n", p, summary)
	}
	if failed {
		return errSilent
	}
	return nil
}

func testCmd(fs *pflag.FlagSet) runFunc {
	verbose := fs.BoolP("verbose", "v", false, "print every case, not only failures")
	format := fs.String("format", "text", "output format: text | json")
	return func(_ context.Context, args []string, stdout, stderr io.Writer) error {
		if *format != "text" && *format != "json" {
			return usagef("--format %q: want text or json", *format)
		}
		return runTest(args, *verbose, *format, stdout)
	}
}

// testResult is one case in test --format json.
type testResult struct {
	File    string `json:"file"`
	Suite   string `json:"suite"`
	Case    string `json:"case"`
	Pass    bool   `json:"pass"`
	Message string `json:"message,omitempty"`
	Policy  string `json:"policy,omitempty"`
	Rule    string `json:"rule,omitempty"`
	Effect  string `json:"effect,omitempty"`
}

func runTest(args []string, verbose bool, format string, stdout io.Writer) error {
	if len(args) != 1 {
		return usagef("want one DIR, or one test FILE")
	}
	// A directory: its policies and its tests. A test file: the policies
	// beside it, as opa test does, and the suites of that file.
	dir, file := args[0], ""
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		data, err := os.ReadFile(dir)
		if err != nil {
			return err
		}
		if k := kindOf(data); k != "PolicyTest" {
			return usagef("%s is a %q file, not a PolicyTest: give a DIR or a *_test.yaml file", dir, k)
		}
		dir, file = filepath.Dir(dir), dir
	}
	set, err := policies.LoadDir(dir)
	if err != nil {
		return err
	}
	var suites []*policytest.Suite
	if file != "" {
		suites, err = policytest.LoadFile(file)
	} else {
		suites, err = policytest.LoadDir(dir)
	}
	if err != nil {
		return err
	}
	if len(suites) == 0 {
		return fmt.Errorf("no test files (*_test.yaml) in %s", dir)
	}
	rep := policytest.Run(set, suites)
	if format == "json" {
		out := struct {
			Passed  int          `json:"passed"`
			Failed  int          `json:"failed"`
			Results []testResult `json:"results"`
		}{Passed: rep.Passed, Failed: rep.Failed, Results: []testResult{}}
		for _, r := range rep.Results {
			out.Results = append(out.Results, testResult{File: r.File, Suite: r.Suite, Case: r.Case, Pass: r.Pass, Message: r.Message,
				Policy: r.Decision.Policy, Rule: r.Decision.Rule, Effect: string(r.Decision.Effect)})
		}
		if err := printValue(stdout, "json", out); err != nil {
			return err
		}
		if !rep.OK() {
			return errSilent
		}
		return nil
	}
	for _, r := range rep.Results {
		switch {
		case !r.Pass:
			fmt.Fprintf(stdout, "FAIL %s: %s / %s\n     %s\n", r.File, r.Suite, r.Case, r.Message)
		case verbose:
			fmt.Fprintf(stdout, "PASS %s: %s / %s\n", r.File, r.Suite, r.Case)
		}
	}
	fmt.Fprintf(stdout, "%d passed, %d failed\n", rep.Passed, rep.Failed)
	if !rep.OK() {
		return errSilent
	}
	return nil
}
