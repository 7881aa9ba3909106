package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/mandate-dev/mandate/policies"
	"github.com/mandate-dev/mandate/policies/policytest"
)

func policyCommands() map[string]command {
	return map[string]command{
		"validate": {"check policy files: mandatectl validate DIR|FILE...", runValidate},
		"test":     {"run policy test cases: mandatectl test DIR", runTest},
		"check":    {"send one Envoy-shaped CheckRequest to mandate-authz and print the decision", runCheck},
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

func runValidate(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("validate", stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("usage: mandatectl validate DIR|FILE...")
	}
	failed := false
	for _, p := range fs.Args() {
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

func runTest(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("test", stderr)
	verbose := fs.Bool("v", false, "print every case, not only failures")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("usage: mandatectl test [-v] DIR")
	}
	dir := fs.Arg(0)
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
		case *verbose:
			fmt.Fprintf(stdout, "PASS %s: %s / %s\n", r.File, r.Suite, r.Case)
		}
	}
	fmt.Fprintf(stdout, "%d passed, %d failed\n", rep.Passed, rep.Failed)
	if !rep.OK() {
		return errSilent
	}
	return nil
}
