// Command mandatectl is the CLI of Mandate's policy authors and operators.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/mandate-dev/mandate/internal/buildinfo"
)

// Exit codes.
const (
	exitFailure = 1 // the command failed (diff: there are changes)
	exitUsage   = 2 // the command line is wrong
	exitDenied  = 3 // check: the request was denied; inspect: invalid mandate
)

// errSilent marks a failure already reported to the user.
var errSilent = errors.New("failed")

type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

// usageErr is a wrong command line: exit 2, with a pointer to --help.
type usageErr struct{ msg string }

func (e usageErr) Error() string { return e.msg }

// usagef returns a usage error (exit 2).
func usagef(format string, args ...any) error {
	return usageErr{msg: fmt.Sprintf(format, args...)}
}

// runFunc runs a command with its positional arguments; its flags were
// bound when the command was built.
type runFunc func(ctx context.Context, args []string, stdout, stderr io.Writer) error

// command is one mandatectl command: build binds its flags to fs and
// returns what runs once they are parsed.
type command struct {
	use     string // name and arguments, "delete NAME"
	summary string
	build   func(fs *pflag.FlagSet) runFunc
}

// commands merges the command groups; each group lives in its own file.
func commands() []command {
	var all []command
	for _, group := range [][]command{policyCommands(), operatorCommands(), mandateCommands()} {
		all = append(all, group...)
	}
	return all
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// newRoot builds the command tree.
func newRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "mandatectl",
		Short: "mandatectl is the CLI of Mandate's policy authors and operators",
		Long: "mandatectl validates and tests policies, sends test decisions to mandate-authz,\n" +
			"and operates mandate-cp: policies, revocations, mandates, approvals, status and audit.",
		Version:                    buildinfo.Read().String(),
		Args:                       cobra.ArbitraryArgs,
		SilenceErrors:              true,
		SilenceUsage:               true,
		SuggestionsMinimumDistance: 2,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				cmd.SetOut(stderr)
				_ = cmd.Usage()
				return exitError{code: exitUsage}
			}
			msg := fmt.Sprintf("unknown command %q", args[0])
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				msg += "\n\nDid you mean this?\n\t" + strings.Join(s, "\n\t")
			}
			return usageErr{msg: msg}
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetVersionTemplate("mandatectl {{.Version}}\n")
	root.SetFlagErrorFunc(flagError)
	root.CompletionOptions.HiddenDefaultCmd = false
	for _, c := range commands() {
		cc := &cobra.Command{
			Use:               c.use,
			Short:             c.summary,
			Args:              cobra.ArbitraryArgs,
			DisableAutoGenTag: true,
		}
		run := c.build(cc.Flags())
		cc.RunE = func(cmd *cobra.Command, args []string) error {
			return run(cmd.Context(), args, stdout, stderr)
		}
		root.AddCommand(cc)
	}
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "print mandatectl's version and VCS revision",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(stdout, buildinfo.Line("mandatectl"))
		},
	})
	return root
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if cmd == nil {
		cmd = root
	}
	var ee exitError
	var ue usageErr
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.code
	case errors.Is(err, errSilent):
		return exitFailure
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "%s: %v\n", cmd.CommandPath(), ue.msg)
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
		return exitUsage
	case strings.HasPrefix(err.Error(), "unknown command"), strings.HasPrefix(err.Error(), "accepts "):
		// cobra's own argument checks (e.g. `help NOPE`, `version x`).
		fmt.Fprintf(stderr, "%s: %v\n", cmd.CommandPath(), err)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "%s: %v\n", cmd.CommandPath(), err)
		return exitFailure
	}
}

// flagError turns a flag parsing error into a usage error, suggesting
// the flags whose names are close to an unknown one.
func flagError(cmd *cobra.Command, err error) error {
	msg := err.Error()
	name := ""
	switch {
	case strings.HasPrefix(msg, "unknown flag: --"):
		name = strings.TrimPrefix(msg, "unknown flag: --")
	case strings.HasPrefix(msg, "unknown shorthand flag: "):
		// "unknown shorthand flag: 'x' in -xyz": a long flag given with one dash?
		if _, after, ok := strings.Cut(msg, " in -"); ok {
			name = after
		}
	}
	if name != "" {
		if s := suggestFlags(cmd.Flags(), name); len(s) > 0 {
			msg += "\n\nDid you mean this?\n\t--" + strings.Join(s, "\n\t--")
		}
	}
	return usageErr{msg: msg}
}

// suggestFlags returns the flag names within edit distance 2 of name,
// or that start with it.
func suggestFlags(fs *pflag.FlagSet, name string) []string {
	name, _, _ = strings.Cut(name, "=")
	var out []string
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Hidden {
			return
		}
		if levenshtein(name, f.Name) <= 2 || (len(name) > 1 && strings.HasPrefix(f.Name, name)) {
			out = append(out, f.Name)
		}
	})
	sort.Strings(out)
	return out
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// listFlag is a repeatable flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	*l = append(*l, v)
	return nil
}
func (l *listFlag) Type() string { return "strings" }
