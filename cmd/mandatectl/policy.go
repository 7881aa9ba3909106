package main

import (
	"context"
	"fmt"
	"github.com/spf13/pflag"
	"io"
	"os"

	"github.com/mandate-dev/mandate/policies"
	"github.com/mandate-dev/mandate/policies/policytest"
)

func policyCommands() []command {
	return []command{
		{"validate DIR|FILE...", "check policy files", validateCmd},
		{"test DIR", "run policy test cases", testCmd},
		{"check", "send one Envoy-shaped CheckRequest to mandate-authz and print the decision", checkCmd},
	}
}

func loadPath(path string) (*policies.Set, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		return policies.LoadDir(path)
	}
	return policies.LoadFile(path)
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
		set, err := loadPath(p)
		if err != nil {
			fmt.Fprintf(stderr, "INVALID %s\n  %v\n", p, err)
			failed = true
			continue
		}
		fmt.Fprintf(stdout, "ok      %s: %d policies, %d rules, version %s\n", p, len(set.Policies()), set.Len(), set.Version())
	}
	if failed {
		return errSilent
	}
	return nil
}

func testCmd(fs *pflag.FlagSet) runFunc {
	verbose := fs.BoolP("verbose", "v", false, "print every case, not only failures")
	return func(_ context.Context, args []string, stdout, stderr io.Writer) error {
		return runTest(args, *verbose, stdout)
	}
}

func runTest(args []string, verbose bool, stdout io.Writer) error {
	if len(args) != 1 {
		return usagef("want one DIR")
	}
	dir := args[0]
	set, err := policies.LoadDir(dir)
	if err != nil {
		return err
	}
	suites, err := policytest.LoadDir(dir)
	if err != nil {
		return err
	}
	if len(suites) == 0 {
		return fmt.Errorf("no test files (*_test.yaml) in %s", dir)
	}
	rep := policytest.Run(set, suites)
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
