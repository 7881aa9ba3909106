// Package proc runs the end-to-end suite's subprocesses: each one logs to its
// own file, is stopped when the test ends, and has its log dumped into the
// test output when the test failed.
package proc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// StopGrace is how long Stop waits after SIGTERM before it sends SIGKILL.
const StopGrace = 5 * time.Second

// dumpLines is how many trailing log lines are printed on failure.
const dumpLines = 200

// Spec describes a process to start.
type Spec struct {
	Name string   // short name used for the log file and messages
	Path string   // binary
	Args []string // arguments, without argv[0]
	Env  []string // extra environment (KEY=VALUE), appended to os.Environ()
	Dir  string   // working directory; empty = inherit
	// LogDir receives <Name>.log with the merged stdout and stderr. Empty =
	// a directory under t.TempDir().
	LogDir string
	// Pipes, when true, keeps a pipe to the process' standard input
	// (Process.Stdin) and sends its standard output to Process.Stdout
	// instead of the log file; standard error still goes to the log.
	Pipes bool
}

// Process is a started subprocess.
type Process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	logFile *os.File
	stdin   io.WriteCloser
	stdout  io.ReadCloser

	done    chan struct{}
	waitErr error

	stopOnce sync.Once
}

// Start starts the process described by spec and registers a cleanup on t
// that stops it and, when t failed, logs the tail of its output.
func Start(t testing.TB, spec Spec) (*Process, error) {
	t.Helper()
	if spec.Name == "" || spec.Path == "" {
		return nil, errors.New("proc: spec needs a Name and a Path")
	}
	logDir := spec.LogDir
	if logDir == "" {
		logDir = t.TempDir()
	}
	logPath := filepath.Join(logDir, spec.Name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("proc: open log of %s: %w", spec.Name, err)
	}
	cmd := exec.Command(spec.Path, spec.Args...)
	cmd.Env = append(os.Environ(), spec.Env...)
	cmd.Dir = spec.Dir
	cmd.Stderr = logFile
	// Own process group, so a stop also reaches children and a test's ^C
	// handling stays with the test binary.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &Process{name: spec.Name, cmd: cmd, logPath: logPath, logFile: logFile, done: make(chan struct{})}
	var childEnds []*os.File
	closeAll := func() {
		for _, f := range childEnds {
			f.Close()
		}
	}
	if spec.Pipes {
		// os.Pipe rather than StdinPipe/StdoutPipe: Wait must not close
		// our ends while a reader is still draining them.
		inR, inW, err := os.Pipe()
		if err != nil {
			logFile.Close()
			return nil, fmt.Errorf("proc: stdin of %s: %w", spec.Name, err)
		}
		outR, outW, err := os.Pipe()
		if err != nil {
			inR.Close()
			inW.Close()
			logFile.Close()
			return nil, fmt.Errorf("proc: stdout of %s: %w", spec.Name, err)
		}
		cmd.Stdin, cmd.Stdout = inR, outW
		p.stdin, p.stdout = inW, outR
		childEnds = []*os.File{inR, outW}
	} else {
		cmd.Stdout = logFile
	}
	if err := cmd.Start(); err != nil {
		closeAll()
		if p.stdin != nil {
			p.stdin.Close()
			p.stdout.Close()
		}
		logFile.Close()
		return nil, fmt.Errorf("proc: start %s: %w", spec.Name, err)
	}
	closeAll()
	go func() {
		p.waitErr = cmd.Wait()
		logFile.Close()
		close(p.done)
		if p.stdin != nil {
			p.stdin.Close()
		}
	}()
	t.Cleanup(func() {
		_ = p.Stop()
		if p.stdout != nil {
			p.stdout.Close()
		}
		if t.Failed() {
			t.Logf("---- last lines of %s (%s) ----\n%s", p.name, p.logPath, p.Tail(dumpLines))
		}
	})
	return p, nil
}

// Name returns the process name.
func (p *Process) Name() string { return p.name }

// Pid returns the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// LogPath returns the log file.
func (p *Process) LogPath() string { return p.logPath }

// Stdin returns the standard input pipe (nil unless Spec.Pipes).
func (p *Process) Stdin() io.WriteCloser { return p.stdin }

// Stdout returns the standard output pipe (nil unless Spec.Pipes).
func (p *Process) Stdout() io.ReadCloser { return p.stdout }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err returns the exit error once Done is closed.
func (p *Process) Err() error {
	select {
	case <-p.done:
		return p.waitErr
	default:
		return nil
	}
}

// Running reports whether the process has not exited yet.
func (p *Process) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Stop sends SIGTERM to the process group, waits up to StopGrace, then
// SIGKILLs it. It is safe to call more than once.
func (p *Process) Stop() error {
	p.stopOnce.Do(func() {
		if !p.Running() {
			return
		}
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(StopGrace):
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	})
	return nil
}

// Kill SIGKILLs the process group at once (a crash, for failure scenarios)
// and waits for the exit.
func (p *Process) Kill() {
	p.stopOnce.Do(func() {
		if !p.Running() {
			return
		}
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	})
}

// Tail returns up to n trailing lines of the log.
func (p *Process) Tail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// WaitLog polls the log until match returns true for a line, the process
// exits, or ctx ends. It returns the matching line.
func (p *Process) WaitLog(ctx context.Context, match func(line string) bool) (string, error) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if line, ok := p.scanLog(match); ok {
			return line, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("proc: %s: waiting for a log line: %w", p.name, ctx.Err())
		case <-p.done:
			if line, ok := p.scanLog(match); ok {
				return line, nil
			}
			return "", fmt.Errorf("proc: %s exited (%v) before the expected log line", p.name, p.waitErr)
		case <-tick.C:
		}
	}
}

func (p *Process) scanLog(match func(string) bool) (string, bool) {
	f, err := os.Open(p.logPath)
	if err != nil {
		return "", false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		if match(sc.Text()) {
			return sc.Text(), true
		}
	}
	return "", false
}

// Poll calls check every interval until it returns nil or ctx ends; the
// last error is wrapped into the returned one.
func Poll(ctx context.Context, interval time.Duration, check func(context.Context) error) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var last error
	for {
		if last = check(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("proc: gave up waiting: %w (last error: %v)", ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// Run runs a short command to completion (bounded by ctx) and returns its
// combined output.
func Run(ctx context.Context, path string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, path, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("proc: %s %s: %w: %s", filepath.Base(path), strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// WaitFile polls until path exists with a non-empty content (written
// atomically by the process, e.g. an -addr-file) and returns it.
func WaitFile(ctx context.Context, path string) ([]byte, error) {
	var b []byte
	err := Poll(ctx, 20*time.Millisecond, func(context.Context) error {
		var err error
		b, err = os.ReadFile(path)
		if err != nil {
			return err
		}
		if len(b) == 0 {
			return errors.New("empty")
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("proc: waiting for %s: %w", path, err)
	}
	return b, nil
}
