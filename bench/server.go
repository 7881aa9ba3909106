package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// server is a Check server process under test.
type server struct {
	cmd         *exec.Cmd
	grpcAddr    string
	metricsAddr string
	addrs       map[string]string
	stderrPath  string
	done        chan struct{}
	waitErr     error
}

// startServer runs bin with args plus --addr-file, in dir, and waits (at
// most timeout) until it has written its addresses.
func startServer(ctx context.Context, dir, name, bin string, args []string, timeout time.Duration) (*server, error) {
	addrFile := filepath.Join(dir, name+".addr.json")
	stderrPath := filepath.Join(dir, name+".stderr")
	// A run before this one (another round) left its address file: the
	// address is the new process's only once it writes the file again.
	if err := os.Remove(addrFile); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("bench: %s: %w", name, err)
	}
	errf, err := os.Create(stderrPath)
	if err != nil {
		return nil, fmt.Errorf("bench: %s: %w", name, err)
	}
	defer errf.Close()
	cmd := exec.Command(bin, append(append([]string{}, args...), "--addr-file", addrFile)...)
	cmd.Stdout = errf
	cmd.Stderr = errf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: starting %s: %w", name, err)
	}
	s := &server{cmd: cmd, stderrPath: stderrPath, done: make(chan struct{})}
	go func() { s.waitErr = cmd.Wait(); close(s.done) }()

	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		b, err := os.ReadFile(addrFile)
		if err == nil {
			if err := json.Unmarshal(b, &s.addrs); err != nil {
				s.stop()
				return nil, fmt.Errorf("bench: %s addr file: %w", name, err)
			}
			s.grpcAddr, s.metricsAddr = s.addrs["grpc"], s.addrs["metrics"]
			if s.metricsAddr == "" {
				s.stop()
				return nil, fmt.Errorf("bench: %s addr file %s lacks metrics", name, b)
			}
			return s, nil
		}
		select {
		case <-s.done:
			return nil, fmt.Errorf("bench: %s exited before serving (%v); see %s: %s", name, s.waitErr, stderrPath, tail(stderrPath))
		case <-deadline.C:
			s.stop()
			return nil, fmt.Errorf("bench: %s not serving after %v; see %s", name, timeout, stderrPath)
		case <-ctx.Done():
			s.stop()
			return nil, ctx.Err()
		case <-tick.C:
		}
	}
}

func (s *server) pid() int { return s.cmd.Process.Pid }

// exited reports whether the process has ended.
func (s *server) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, and SIGKILL after 5s.
func (s *server) stop() {
	if s.exited() {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// tail returns the last 2 KiB of a file, for error messages.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(b) > 2048 {
		b = b[len(b)-2048:]
	}
	return string(b)
}

var errServerDied = errors.New("bench: server process died during the run")
