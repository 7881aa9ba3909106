// Package spire runs a real SPIRE server and agent for the end-to-end suite:
// loopback only, in a temporary directory, join-token node attestation and
// unix workload attestation keyed on the workload's binary path.
package spire

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/e2e/internal/proc"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Version is the SPIRE release the suite is written against.
const Version = "v1.13.3"

// Environment variables understood by the package.
const (
	// EnvCache overrides the binary cache root (default $HOME/.cache/mandate/spire).
	EnvCache = "MANDATE_SPIRE_CACHE"
	// EnvBinDir points straight at a directory holding spire-server and spire-agent.
	EnvBinDir = "MANDATE_SPIRE_BIN"
	// EnvRequire, set to 1, turns missing binaries into a test failure instead of a skip.
	EnvRequire = "MANDATE_E2E_REQUIRE_SPIRE"
)

// DefaultTrustDomain is the trust domain of the test deployment.
const DefaultTrustDomain = "example.org"

// Options configures Start. Zero values take the defaults noted.
type Options struct {
	// BinDir holds spire-server and spire-agent; default FindBinaries().
	BinDir string
	// TrustDomain defaults to DefaultTrustDomain.
	TrustDomain string
	// CATTL is the server CA lifetime (default 24h).
	CATTL time.Duration
	// X509SVIDTTL is default_x509_svid_ttl (default 1h). The agent renews an
	// SVID at half its lifetime, so 1m gives a rotation every ~30s.
	X509SVIDTTL time.Duration
	// StartTimeout bounds bringing both processes up (default 60s).
	StartTimeout time.Duration
	// LogLevel of both processes (default "DEBUG").
	LogLevel string
}

// Env is a running SPIRE server and agent.
type Env struct {
	t           testing.TB
	opts        Options
	td          spiffeid.TrustDomain
	nodeID      spiffeid.ID
	binDir      string
	dir         string // short temp dir holding sockets, config and data
	serverSock  string
	agentSock   string
	serverAddr  string
	bundlePath  string
	server      *proc.Process
	agent       *proc.Process
	agentBinary string // resolved path of spire-agent, for the sync probe

	mu     sync.Mutex
	probes int
}

// ErrNoBinaries is returned (wrapped) when the SPIRE binaries are missing.
var ErrNoBinaries = errors.New("spire: SPIRE binaries not found (run e2e/spire-install.sh)")

// CacheDir returns the directory where e2e/spire-install.sh puts the binaries.
func CacheDir() string {
	root := os.Getenv(EnvCache)
	if root == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = os.TempDir()
		}
		root = filepath.Join(home, ".cache", "mandate", "spire")
	}
	return filepath.Join(root, Version)
}

// FindBinaries returns the directory holding spire-server and spire-agent:
// $MANDATE_SPIRE_BIN when set, else CacheDir(). The error wraps ErrNoBinaries.
func FindBinaries() (string, error) {
	dir := os.Getenv(EnvBinDir)
	if dir == "" {
		dir = CacheDir()
	}
	for _, name := range []string{"spire-server", "spire-agent"} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			return "", fmt.Errorf("%w: no executable %s in %s", ErrNoBinaries, name, dir)
		}
	}
	return dir, nil
}

// RequireBinaries returns the binary directory, or skips t with a clear
// message when the binaries are absent, or fails t when absence is not
// allowed (MANDATE_E2E_REQUIRE_SPIRE=1).
func RequireBinaries(t testing.TB) string {
	t.Helper()
	dir, err := FindBinaries()
	if err == nil {
		return dir
	}
	if os.Getenv(EnvRequire) == "1" {
		t.Fatalf("%v; %s=1 makes this a failure", err, EnvRequire)
	}
	t.Skipf("skipping: %v; set %s=1 to fail instead", err, EnvRequire)
	return ""
}

// Start brings up a SPIRE server and an agent attested with a join token and
// waits until both are healthy. Both are stopped when t ends (or by Stop);
// their logs are dumped when t failed.
func Start(ctx context.Context, t testing.TB, opts Options) (*Env, error) {
	t.Helper()
	if opts.TrustDomain == "" {
		opts.TrustDomain = DefaultTrustDomain
	}
	if opts.CATTL == 0 {
		opts.CATTL = 24 * time.Hour
	}
	if opts.X509SVIDTTL == 0 {
		opts.X509SVIDTTL = time.Hour
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 60 * time.Second
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "DEBUG"
	}
	if opts.X509SVIDTTL < 0 || opts.CATTL < 0 || opts.X509SVIDTTL > opts.CATTL {
		return nil, fmt.Errorf("spire: need 0 < X509SVIDTTL (%v) <= CATTL (%v)", opts.X509SVIDTTL, opts.CATTL)
	}
	td, err := spiffeid.TrustDomainFromString(opts.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("spire: trust domain: %w", err)
	}
	nodeID, err := spiffeid.FromPath(td, "/node")
	if err != nil {
		return nil, fmt.Errorf("spire: node id: %w", err)
	}
	binDir := opts.BinDir
	if binDir == "" {
		if binDir, err = FindBinaries(); err != nil {
			return nil, err
		}
	}
	agentBinary, err := filepath.EvalSymlinks(filepath.Join(binDir, "spire-agent"))
	if err != nil {
		return nil, fmt.Errorf("spire: resolve spire-agent: %w", err)
	}
	if agentBinary, err = filepath.Abs(agentBinary); err != nil {
		return nil, fmt.Errorf("spire: resolve spire-agent: %w", err)
	}
	// Unix socket paths are limited to 108 bytes: t.TempDir() can be too
	// long, so the sockets live in a short directory of their own.
	dir, err := os.MkdirTemp("", "spire-e2e-")
	if err != nil {
		return nil, fmt.Errorf("spire: temp dir: %w", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })

	e := &Env{
		t: t, opts: opts, td: td, nodeID: nodeID, binDir: binDir, dir: dir,
		serverSock:  filepath.Join(dir, "server.sock"),
		agentSock:   filepath.Join(dir, "agent.sock"),
		bundlePath:  filepath.Join(dir, "bundle.pem"),
		agentBinary: agentBinary,
	}
	ctx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()
	if err := e.startServer(ctx); err != nil {
		e.Stop()
		return nil, err
	}
	if err := e.startAgent(ctx); err != nil {
		e.Stop()
		return nil, err
	}
	return e, nil
}

func (e *Env) serverBin() string { return filepath.Join(e.binDir, "spire-server") }
func (e *Env) agentBin() string  { return filepath.Join(e.binDir, "spire-agent") }

// hclString quotes s as an HCL string.
func hclString(s string) string { return strconv.Quote(s) }

// errPortTaken: the server's port was taken between choosing and binding.
var errPortTaken = errors.New("spire: server port taken")

// startServer starts the server on a free loopback port. SPIRE turns
// bind_port 0 into its default 8081 (so two suites on one machine would
// collide): the port is chosen here, and chosen again if another process
// took it before the server bound it.
func (e *Env) startServer(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		err = e.startServerOn(ctx, port, attempt)
		if !errors.Is(err, errPortTaken) || attempt == 5 {
			return err
		}
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("spire: pick a port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (e *Env) startServerOn(ctx context.Context, port, attempt int) error {
	dataDir := filepath.Join(e.dir, fmt.Sprintf("server-data-%d", attempt))
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("spire: server data dir: %w", err)
	}
	conf := fmt.Sprintf(`server {
    bind_address = "127.0.0.1"
    bind_port = "%d"
    socket_path = %s
    trust_domain = %s
    data_dir = %s
    log_level = %s
    log_format = "json"
    ca_ttl = %s
    default_x509_svid_ttl = %s
    experimental {
        cache_reload_interval = "1s"
    }
}
plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = %s
        }
    }
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
}
`, port, hclString(e.serverSock), hclString(e.td.Name()), hclString(dataDir), hclString(e.opts.LogLevel),
		hclString(e.opts.CATTL.String()), hclString(e.opts.X509SVIDTTL.String()),
		hclString(filepath.Join(dataDir, "datastore.sqlite3")))
	confPath := filepath.Join(e.dir, "server.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return fmt.Errorf("spire: write server config: %w", err)
	}
	p, err := proc.Start(e.t, proc.Spec{
		Name: fmt.Sprintf("spire-server-%d", attempt), Path: e.serverBin(),
		Args: []string{"run", "-config", confPath}, LogDir: e.dir,
	})
	if err != nil {
		return fmt.Errorf("spire: %w", err)
	}
	e.server = p
	line, err := p.WaitLog(ctx, func(l string) bool {
		return strings.Contains(l, "Starting Server APIs") && strings.Contains(l, `"network":"tcp"`)
	})
	if err != nil {
		if strings.Contains(p.Tail(50), "address already in use") {
			p.Kill()
			return fmt.Errorf("%w: %d", errPortTaken, port)
		}
		return fmt.Errorf("spire: server did not start: %w", err)
	}
	var rec struct {
		Address string `json:"address"`
	}
	if err := json.Unmarshal([]byte(line), &rec); err != nil || rec.Address == "" {
		return fmt.Errorf("spire: cannot read the server address from %q: %v", line, err)
	}
	e.serverAddr = rec.Address
	err = proc.Poll(ctx, 100*time.Millisecond, func(ctx context.Context) error {
		_, err := proc.Run(ctx, e.serverBin(), "healthcheck", "-socketPath", e.serverSock)
		return err
	})
	if err != nil {
		return fmt.Errorf("spire: server not healthy: %w", err)
	}
	return nil
}

func (e *Env) startAgent(ctx context.Context) error {
	bundle, err := proc.Run(ctx, e.serverBin(), "bundle", "show", "-socketPath", e.serverSock)
	if err != nil {
		return fmt.Errorf("spire: bundle show: %w", err)
	}
	if err := os.WriteFile(e.bundlePath, []byte(bundle), 0o600); err != nil {
		return fmt.Errorf("spire: write bundle: %w", err)
	}
	out, err := proc.Run(ctx, e.serverBin(), "token", "generate",
		"-socketPath", e.serverSock, "-spiffeID", e.nodeID.String(), "-ttl", "600")
	if err != nil {
		return fmt.Errorf("spire: token generate: %w", err)
	}
	token := ""
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "Token:"); ok {
			token = strings.TrimSpace(v)
		}
	}
	if token == "" {
		return fmt.Errorf("spire: no token in %q", out)
	}
	_, port, err := splitHostPort(e.serverAddr)
	if err != nil {
		return err
	}
	dataDir := filepath.Join(e.dir, "agent-data")
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("spire: agent data dir: %w", err)
	}
	conf := fmt.Sprintf(`agent {
    data_dir = %s
    log_level = %s
    log_format = "json"
    server_address = "127.0.0.1"
    server_port = %s
    socket_path = %s
    trust_bundle_path = %s
    trust_domain = %s
    join_token = %s
    experimental {
        sync_interval = "1s"
    }
}
plugins {
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
    WorkloadAttestor "unix" {
        plugin_data {
            discover_workload_path = true
        }
    }
}
`, hclString(dataDir), hclString(e.opts.LogLevel), hclString(port), hclString(e.agentSock),
		hclString(e.bundlePath), hclString(e.td.Name()), hclString(token))
	confPath := filepath.Join(e.dir, "agent.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return fmt.Errorf("spire: write agent config: %w", err)
	}
	p, err := proc.Start(e.t, proc.Spec{
		Name: "spire-agent", Path: e.agentBin(),
		Args: []string{"run", "-config", confPath}, LogDir: e.dir,
	})
	if err != nil {
		return fmt.Errorf("spire: %w", err)
	}
	e.agent = p
	err = proc.Poll(ctx, 100*time.Millisecond, func(ctx context.Context) error {
		if !p.Running() {
			return fmt.Errorf("spire-agent exited: %v", p.Err())
		}
		_, err := proc.Run(ctx, e.agentBin(), "healthcheck", "-socketPath", e.agentSock)
		return err
	})
	if err != nil {
		return fmt.Errorf("spire: agent not healthy: %w", err)
	}
	return nil
}

func splitHostPort(addr string) (string, string, error) {
	i := strings.LastIndex(addr, ":")
	if i < 0 {
		return "", "", fmt.Errorf("spire: bad server address %q", addr)
	}
	return addr[:i], addr[i+1:], nil
}

// TrustDomain returns the trust domain.
func (e *Env) TrustDomain() spiffeid.TrustDomain { return e.td }

// NodeID returns the agent's SPIFFE ID, the parent of every registered entry.
func (e *Env) NodeID() spiffeid.ID { return e.nodeID }

// SocketPath returns the Workload API socket path of the agent.
func (e *Env) SocketPath() string { return e.agentSock }

// SocketAddr returns the Workload API address ("unix://" + SocketPath()),
// the value for SPIFFE_ENDPOINT_SOCKET.
func (e *Env) SocketAddr() string { return "unix://" + e.agentSock }

// WorkloadEnv returns the environment a workload needs to reach the agent.
func (e *Env) WorkloadEnv() []string { return []string{"SPIFFE_ENDPOINT_SOCKET=" + e.SocketAddr()} }

// ServerAddr returns the server's TCP address.
func (e *Env) ServerAddr() string { return e.serverAddr }

// BundlePath returns the PEM trust bundle file.
func (e *Env) BundlePath() string { return e.bundlePath }

// Server returns the server process (for failure scenarios).
func (e *Env) Server() *proc.Process { return e.server }

// Agent returns the agent process (for failure scenarios).
func (e *Env) Agent() *proc.Process { return e.agent }

// PathSelector returns the unix:path selector matching a binary: what
// Register needs to give that binary an identity.
func PathSelector(binary string) (string, error) {
	p, err := filepath.Abs(binary)
	if err != nil {
		return "", fmt.Errorf("spire: selector path: %w", err)
	}
	if p, err = filepath.EvalSymlinks(p); err != nil {
		return "", fmt.Errorf("spire: selector path: %w", err)
	}
	return "unix:path:" + p, nil
}

// Register creates a registration entry for spiffeID (parent: the agent's
// node ID) with the given selectors ("type:value", e.g. "unix:path:/bin/x"),
// then waits until the agent has synced it (see WaitSynced).
func (e *Env) Register(ctx context.Context, spiffeID string, selectors ...string) error {
	if err := e.createEntry(ctx, spiffeID, selectors); err != nil {
		return err
	}
	return e.WaitSynced(ctx)
}

// RegisterBinary is Register with the unix:path selector of binary.
func (e *Env) RegisterBinary(ctx context.Context, spiffeID, binary string) error {
	sel, err := PathSelector(binary)
	if err != nil {
		return err
	}
	return e.Register(ctx, spiffeID, sel)
}

// CreateEntry creates a registration entry like Register but does not wait
// for the agent to sync it: create several, then call WaitSynced once.
func (e *Env) CreateEntry(ctx context.Context, spiffeID string, selectors ...string) error {
	return e.createEntry(ctx, spiffeID, selectors)
}

func (e *Env) createEntry(ctx context.Context, spiffeID string, selectors []string) error {
	id, err := spiffeid.FromString(spiffeID)
	if err != nil {
		return fmt.Errorf("spire: register %q: %w", spiffeID, err)
	}
	if !id.MemberOf(e.td) {
		return fmt.Errorf("spire: register %q: not in trust domain %s", spiffeID, e.td)
	}
	if len(selectors) == 0 {
		return fmt.Errorf("spire: register %q: no selectors", spiffeID)
	}
	args := []string{"entry", "create", "-socketPath", e.serverSock,
		"-parentID", e.nodeID.String(), "-spiffeID", id.String(),
		"-x509SVIDTTL", strconv.Itoa(int(e.opts.X509SVIDTTL / time.Second))}
	for _, s := range selectors {
		if strings.Count(s, ":") < 1 {
			return fmt.Errorf("spire: register %q: bad selector %q", spiffeID, s)
		}
		args = append(args, "-selector", s)
	}
	if _, err := proc.Run(ctx, e.serverBin(), args...); err != nil {
		return fmt.Errorf("spire: register %q: %w", spiffeID, err)
	}
	return nil
}

// WaitSynced returns once the agent has received every entry created before
// the call. It registers a fresh probe entry for the spire-agent binary
// itself and polls `spire-agent api fetch x509` (attested as that binary)
// until the probe's SVID is served: the agent syncs whole snapshots, so
// the earlier entries are there too.
func (e *Env) WaitSynced(ctx context.Context) error {
	e.mu.Lock()
	e.probes++
	n := e.probes
	e.mu.Unlock()
	var nonce [4]byte
	_, _ = rand.Read(nonce[:])
	probe := fmt.Sprintf("spiffe://%s/e2e-sync-probe/%d-%s", e.td.Name(), n, hex.EncodeToString(nonce[:]))
	if err := e.createEntry(ctx, probe, []string{"unix:path:" + e.agentBinary}); err != nil {
		return err
	}
	err := proc.Poll(ctx, 200*time.Millisecond, func(ctx context.Context) error {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		out, err := proc.Run(cctx, e.agentBin(), "api", "fetch", "x509", "-socketPath", e.agentSock, "-timeout", "2s")
		if err != nil {
			return err
		}
		if !strings.Contains(out, probe) {
			return fmt.Errorf("probe %s not served yet", probe)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("spire: waiting for the agent to sync: %w", err)
	}
	return nil
}

// Stop stops the agent, then the server. Also done automatically when the
// test ends.
func (e *Env) Stop() {
	if e.agent != nil {
		_ = e.agent.Stop()
	}
	if e.server != nil {
		_ = e.server.Stop()
	}
}
