// Package cmdutil holds the small pieces Mandate's binaries share: a
// repeatable list flag, the address file tests and scripts read, and the
// log level flag.
package cmdutil

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
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
