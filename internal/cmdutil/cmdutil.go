// Package cmdutil holds the small pieces Mandate's binaries share: a
// repeatable list flag, the address file tests and scripts read, and the
// log level flag, and the exit codes of a command line.
package cmdutil

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/mandate-dev/mandate/internal/buildinfo"
)

// List is a repeatable flag; each value may also hold several
// comma-separated items. Empty items are dropped.
type List []string

// String implements flag.Value.
func (l *List) String() string { return strings.Join(*l, ",") }

// Set implements flag.Value.
func (l *List) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

// WriteAddrFile writes the bound addresses as a JSON object, atomically
// (a reader never sees half a file), for listeners started on port 0.
func WriteAddrFile(path string, addrs map[string]string) error {
	b, err := json.Marshal(addrs)
	if err != nil {
		return fmt.Errorf("addr file: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("addr file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("addr file: %w", err)
	}
	return nil
}

// ParseLevel parses a --log-level value (debug, info, warn, error).
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return slog.LevelInfo, fmt.Errorf("log level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// usageError is a wrong command line.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// UsageError marks err (nil stays nil) as a wrong command line: Main
// exits 2 for it, as for a flag parsing error.
func UsageError(err error) error {
	if err == nil {
		return nil
	}
	return usageError{err}
}

// Main runs a server binary's command line and returns its exit code:
// `version` (or --version) prints the module version and VCS revision;
// --help exits 0; a usage error exits 2 with a pointer to --help; any
// other error exits 1. Errors are printed once, prefixed with name.
func Main(name string, args []string, stdout, stderr io.Writer, run func(args []string) error) int {
	if len(args) == 1 && (args[0] == "version" || args[0] == "--version" || args[0] == "-version") {
		fmt.Fprintln(stdout, buildinfo.Line(name))
		return 0
	}
	err := run(args)
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "%s: %v\nRun '%s --help' for usage.\n", name, err, name)
		return 2
	default:
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
}

// NewLogger returns the JSON logger of a server binary: durations are
// written as strings ("1.5s"), not as nanoseconds.
func NewLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: durationString}))
}

func durationString(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

// Hangups delivers SIGHUP to the returned channel until stop is called:
// from then on a SIGHUP never kills the process (its default action),
// and the binary reloads what it can.
func Hangups() (hup <-chan os.Signal, stop func()) {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGHUP)
	return c, func() { signal.Stop(c) }
}

// ForwardHangups calls reload for each SIGHUP from hup (see Hangups)
// until ctx ends.
func ForwardHangups(ctx context.Context, hup <-chan os.Signal, reload func()) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			reload()
		}
	}
}
