package cmdutil

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestList(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var l List
	fs.Var(&l, "x", "")
	if err := fs.Parse([]string{"-x", "a,b", "-x", " c ,,", "-x", ""}); err != nil {
		t.Fatal(err)
	}
	if want := (List{"a", "b", "c"}); !reflect.DeepEqual(l, want) {
		t.Fatalf("List = %q, want %q", l, want)
	}
	if l.String() != "a,b,c" {
		t.Fatalf("String = %q", l.String())
	}
}

func TestWriteAddrFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "addrs.json")
	if err := WriteAddrFile(p, map[string]string{"grpc": "127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]string
	if err := json.Unmarshal(b, &got); err != nil || got["grpc"] != "127.0.0.1:1" {
		t.Fatalf("addr file %s: %v", b, err)
	}
	if _, err := os.Stat(p + ".tmp"); !os.IsNotExist(err) {
		t.Fatal("temporary file left behind")
	}
	if err := WriteAddrFile(filepath.Join(t.TempDir(), "missing", "x.json"), nil); err == nil {
		t.Fatal("wrote into a missing directory")
	}
}

func TestParseLevel(t *testing.T) {
	if l, err := ParseLevel("warn"); err != nil || l != slog.LevelWarn {
		t.Fatalf("warn: %v %v", l, err)
	}
	if _, err := ParseLevel("loud"); err == nil {
		t.Fatal("accepted an unknown level")
	}
}

func TestMain(t *testing.T) {
	parse := func(args []string) error {
		fs := flag.NewFlagSet("srv", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		n := fs.Int("n", 0, "")
		if err := fs.Parse(args); err != nil {
			return UsageError(err)
		}
		if *n < 0 {
			return errors.New("boom")
		}
		return nil
	}
	tests := []struct {
		args      []string
		code      int
		out, errs string
	}{
		{nil, 0, "", ""},
		{[]string{"version"}, 0, "srv ", ""},
		{[]string{"--version"}, 0, "srv ", ""},
		{[]string{"--help"}, 0, "", ""},
		{[]string{"-h"}, 0, "", ""},
		{[]string{"--bogus"}, 2, "", "srv: flag provided but not defined: -bogus\nRun 'srv --help' for usage.\n"},
		{[]string{"-n", "x"}, 2, "", "Run 'srv --help'"},
		{[]string{"-n", "-1"}, 1, "", "srv: boom\n"},
	}
	for _, tt := range tests {
		var out, errb bytes.Buffer
		code := Main("srv", tt.args, &out, &errb, parse)
		if code != tt.code || !strings.Contains(out.String(), tt.out) || !strings.Contains(errb.String(), tt.errs) {
			t.Errorf("Main(%q) = %d, stdout %q, stderr %q; want %d, %q, %q", tt.args, code, out.String(), errb.String(), tt.code, tt.out, tt.errs)
		}
	}
}

func TestNewLoggerDurations(t *testing.T) {
	var b bytes.Buffer
	NewLogger(&b, slog.LevelInfo).Info("x", "budget", 1500*time.Millisecond, "n", 3)
	if !strings.Contains(b.String(), `"budget":"1.5s"`) || !strings.Contains(b.String(), `"n":3`) {
		t.Fatalf("log line %s: want the duration as a string", b.String())
	}
}

func TestHangupsDoNotKill(t *testing.T) {
	hup, stop := Hangups()
	defer stop()
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	select {
	case <-hup:
	case <-time.After(10 * time.Second):
		t.Fatal("SIGHUP not delivered")
	}
}

func TestForwardHangups(t *testing.T) {
	hup := make(chan os.Signal)
	ctx, cancel := context.WithCancel(context.Background())
	reloads := make(chan struct{}, 2)
	done := make(chan struct{})
	go func() { ForwardHangups(ctx, hup, func() { reloads <- struct{}{} }); close(done) }()
	hup <- syscall.SIGHUP
	hup <- syscall.SIGHUP
	if len(reloads) < 1 {
		t.Fatal("no reload after two hangups")
	}
	cancel()
	<-done
	if n := len(reloads); n != 2 {
		t.Fatalf("%d reloads for two hangups", n)
	}
}
