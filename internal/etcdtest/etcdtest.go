// Package etcdtest starts real etcd clusters on loopback for tests: the
// pinned etcd member built by e2e/etcd-install.sh (cached outside the
// repository), N members on free 127.0.0.1 ports, data in the test's
// temporary directory, stopped when the test ends.
//
// Without the binary the tests skip, unless MANDATE_E2E_REQUIRE_ETCD is
// set (CI sets it after running the install script): then they fail.
package etcdtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// RequireEnv makes a missing etcd binary a failure instead of a skip.
const RequireEnv = "MANDATE_E2E_REQUIRE_ETCD"

// BinEnv names the etcd member binary directly.
const BinEnv = "MANDATE_ETCD_BIN"

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// Binary returns the path of the etcd member binary, or skips (fails
// under RequireEnv) when it is not installed.
func Binary(t testing.TB) string {
	t.Helper()
	bin, err := Find()
	if err != nil {
		if os.Getenv(RequireEnv) != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	return bin
}

// Find returns the path of the etcd member binary, or why there is none.
func Find() (string, error) {
	binOnce.Do(func() {
		if p := os.Getenv(BinEnv); p != "" {
			binPath = p
			return
		}
		_, file, _, _ := runtime.Caller(0)
		script := filepath.Join(filepath.Dir(file), "..", "..", "e2e", "etcd-install.sh")
		cmd := exec.Command("bash", script)
		cmd.Env = append(os.Environ(), "MANDATE_ETCD_NO_BUILD=1")
		out, err := cmd.Output()
		if err != nil {
			binErr = fmt.Errorf("etcd is not installed (run e2e/etcd-install.sh): %w", err)
			return
		}
		binPath = strings.TrimSpace(string(out))
	})
	return binPath, binErr
}

// Member is one etcd process.
type Member struct {
	Name, ClientURL, PeerURL, Dir string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File
}

// Cluster is a running etcd cluster.
type Cluster struct {
	t       testing.TB
	bin     string
	cluster string
	env     []string // added to each member's environment
	Members []*Member
}

// Start starts an n-member cluster and waits until every member serves.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	return StartEnv(t, n, nil)
}

// StartEnv is Start with env ("KEY=value") added to every member's
// environment (GOMAXPROCS=1, for one).
func StartEnv(t testing.TB, n int, env []string) *Cluster {
	t.Helper()
	bin := Binary(t)
	var lastErr error
	for range 3 { // a free port taken in between: try again
		c, err := start(t, bin, n, env)
		if err == nil {
			return c
		}
		lastErr = err
	}
	t.Fatalf("etcdtest: start %d members: %v", n, lastErr)
	return nil
}

func start(t testing.TB, bin string, n int, env []string) (*Cluster, error) {
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	root := t.TempDir()
	c := &Cluster{t: t, bin: bin, env: env}
	var peers []string
	for i := range n {
		m := &Member{Name: fmt.Sprintf("m%d", i),
			ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[2*i]),
			PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]),
			Dir:       filepath.Join(root, fmt.Sprintf("m%d", i))}
		c.Members = append(c.Members, m)
		peers = append(peers, m.Name+"="+m.PeerURL)
	}
	c.cluster = strings.Join(peers, ",")
	t.Cleanup(c.Close)
	ready := make(chan error, n)
	for _, m := range c.Members {
		if err := c.run(m, ready); err != nil {
			c.Close()
			return nil, err
		}
	}
	if err := c.waitReady(ready, n); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) run(m *Member, ready chan<- error) error {
	if err := os.MkdirAll(m.Dir, 0o700); err != nil {
		return err
	}
	logf, err := os.OpenFile(m.Dir+".log", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(c.bin, "-name", m.Name, "-data-dir", m.Dir, "-client-url", m.ClientURL,
		"-peer-url", m.PeerURL, "-initial-cluster", c.cluster, "-log-level", "error")
	if len(c.env) > 0 {
		cmd.Env = append(os.Environ(), c.env...)
	}
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		_ = logf.Close()
		return err
	}
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return fmt.Errorf("start %s: %w", m.Name, err)
	}
	done := make(chan struct{})
	m.mu.Lock()
	m.cmd, m.done, m.log = cmd, done, logf
	m.mu.Unlock()
	go func() {
		sc := bufio.NewScanner(out)
		sent := false
		for sc.Scan() {
			if !sent && strings.Contains(sc.Text(), "etcdserver: ready") {
				ready <- nil
				sent = true
			}
		}
		err := cmd.Wait()
		_ = logf.Close()
		if !sent {
			ready <- fmt.Errorf("member %s exited before it was ready: %v (log %s.log)", m.Name, err, m.Dir)
		}
		close(done)
	}()
	return nil
}

func (c *Cluster) waitReady(ready <-chan error, n int) error {
	timeout := time.After(60 * time.Second)
	for range n {
		select {
		case err := <-ready:
			if err != nil {
				return err
			}
		case <-timeout:
			return errors.New("members not ready within 60s")
		}
	}
	return nil
}

// Endpoints returns every member's client URL.
func (c *Cluster) Endpoints() []string {
	out := make([]string, len(c.Members))
	for i, m := range c.Members {
		out[i] = m.ClientURL
	}
	return out
}

// Kill sends SIGKILL to member i and waits for it to exit.
func (c *Cluster) Kill(i int) { c.Members[i].signal(syscall.SIGKILL) }

// Stop sends SIGTERM to member i and waits for it to exit.
func (c *Cluster) Stop(i int) { c.Members[i].signal(syscall.SIGTERM) }

// Pause stops member i (SIGSTOP) without ending it: its connections
// stay open and silent, as a member that hangs. Resume continues it.
func (c *Cluster) Pause(i int) { c.Members[i].send(syscall.SIGSTOP) }

// Resume continues member i after Pause.
func (c *Cluster) Resume(i int) { c.Members[i].send(syscall.SIGCONT) }

func (m *Member) send(sig syscall.Signal) {
	m.mu.Lock()
	cmd := m.cmd
	m.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Signal(sig)
	}
}

func (m *Member) signal(sig syscall.Signal) {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Restart starts member i again on its data directory (after Kill or
// Stop) and waits until it serves.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	ready := make(chan error, 1)
	if err := c.run(c.Members[i], ready); err != nil {
		c.t.Fatal(err)
	}
	if err := c.waitReady(ready, 1); err != nil {
		c.t.Fatal(err)
	}
}

// Close kills every member.
func (c *Cluster) Close() {
	for _, m := range c.Members {
		m.signal(syscall.SIGKILL)
	}
}

// freePorts returns n distinct free loopback ports (free when checked:
// the caller retries if one is taken before it binds).
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// WaitHealthy polls fn until it returns nil or the deadline passes.
func WaitHealthy(ctx context.Context, fn func(context.Context) error) error {
	var err error
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		err = fn(cctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
