package proc

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStartWaitLogStop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := Start(t, Spec{Name: "sleeper", Path: "/bin/sh", Args: []string{"-c", `echo "hello $GREETING"; echo oops >&2; exec sleep 60`}, Env: []string{"GREETING=world"}})
	if err != nil {
		t.Fatal(err)
	}
	line, err := p.WaitLog(ctx, func(l string) bool { return strings.HasPrefix(l, "hello") })
	if err != nil || line != "hello world" {
		t.Fatalf("WaitLog = %q, %v", line, err)
	}
	if _, err := p.WaitLog(ctx, func(l string) bool { return l == "oops" }); err != nil {
		t.Fatalf("stderr not logged: %v", err)
	}
	start := time.Now()
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	if p.Running() || time.Since(start) > StopGrace {
		t.Fatalf("Stop: running=%v after %v", p.Running(), time.Since(start))
	}
	if !strings.Contains(p.Tail(10), "hello world") {
		t.Fatalf("Tail = %q", p.Tail(10))
	}
}

func TestWaitLogReportsExit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := Start(t, Spec{Name: "quitter", Path: "/bin/sh", Args: []string{"-c", "exit 3"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.WaitLog(ctx, func(string) bool { return false }); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("WaitLog on an exited process = %v", err)
	}
	if p.Err() == nil {
		t.Fatal("exit status lost")
	}
}

func TestKillAndPipes(t *testing.T) {
	p, err := Start(t, Spec{Name: "cat", Path: "/bin/cat", Pipes: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Stdin().Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := p.Stdout().Read(buf); err != nil || string(buf) != "ping\n" {
		t.Fatalf("read %q, %v", buf, err)
	}
	p.Kill()
	if p.Running() {
		t.Fatal("still running after Kill")
	}
}

func TestPollAndWaitFile(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := Poll(ctx, 10*time.Millisecond, func(context.Context) error { return os.ErrNotExist }); err == nil {
		t.Fatal("Poll returned nil for a check that never passes")
	}
	path := filepath.Join(t.TempDir(), "addr")
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	go func() { _ = os.WriteFile(path, []byte("127.0.0.1:1"), 0o600) }()
	b, err := WaitFile(ctx2, path)
	if err != nil || string(b) != "127.0.0.1:1" {
		t.Fatalf("WaitFile = %q, %v", b, err)
	}
	if _, err := Run(ctx2, "/bin/sh", "-c", "exit 1"); err == nil {
		t.Fatal("Run hid a failure")
	}
}
