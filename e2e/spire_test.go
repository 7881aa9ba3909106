package e2e

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/mandate-dev/mandate/e2e/internal/agentproto"
	"github.com/mandate-dev/mandate/e2e/internal/proc"
	"github.com/mandate-dev/mandate/e2e/internal/spire"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/genproto/googleapis/rpc/code"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	modPrefix     = "github.com/mandate-dev/mandate/e2e/cmd/"
	agentAID      = "spiffe://example.org/agent/a"
	agentBID      = "spiffe://example.org/agent/b"
	frontproxyID  = "spiffe://example.org/frontproxy"
	fakeAuthzID   = "spiffe://example.org/mandate-authz"
	testBudget    = 3 * time.Minute
	whoamiTimeout = 60 * time.Second
)

func startSpire(t *testing.T, ctx context.Context) *spire.Env {
	t.Helper()
	bin := spire.RequireBinaries(t)
	env, err := spire.Start(ctx, t, spire.Options{BinDir: bin})
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func whoami(t *testing.T, ctx context.Context, env *spire.Env, bin string, svidTimeout time.Duration) (agentproto.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, svidTimeout+10*time.Second)
	defer cancel()
	out, err := proc.Run(ctx, "env", append(env.WorkloadEnv(), bin, "-mode", "whoami", "-svid-timeout", svidTimeout.String())...)
	if err != nil {
		return agentproto.Response{}, err
	}
	var r agentproto.Response
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		t.Fatalf("whoami output %q: %v", out, err)
	}
	return r, nil
}

// TestSpireIssuesSVIDsByBinaryPath: a registered testagent copy receives
// exactly its registered identity from a real SPIRE agent; an unregistered
// copy of the same program receives nothing.
func TestSpireIssuesSVIDsByBinaryPath(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testBudget)
	defer cancel()
	env := startSpire(t, ctx)
	b := spire.NewBuilder(t)
	agentA, err := b.Build(ctx, modPrefix+"testagent", "agent-a")
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := b.Build(ctx, modPrefix+"testagent", "stranger")
	if err != nil {
		t.Fatal(err)
	}
	if err := env.RegisterBinary(ctx, agentAID, agentA); err != nil {
		t.Fatal(err)
	}
	r, err := whoami(t, ctx, env, agentA, whoamiTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if r.SPIFFEID != agentAID || r.Error != "" {
		t.Fatalf("whoami = %+v, want %s", r, agentAID)
	}
	if r, err := whoami(t, ctx, env, stranger, 3*time.Second); err == nil {
		t.Fatalf("unregistered binary got an identity: %+v", r)
	}
}

// TestSpireShortSVIDTTL: Options.X509SVIDTTL reaches the issued SVIDs (the
// rotation scenarios depend on it).
func TestSpireShortSVIDTTL(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testBudget)
	defer cancel()
	bin := spire.RequireBinaries(t)
	env, err := spire.Start(ctx, t, spire.Options{BinDir: bin, X509SVIDTTL: time.Minute, CATTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := env.RegisterBinary(ctx, "spiffe://example.org/e2e-test", self); err != nil {
		t.Fatal(err)
	}
	svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(env.SocketAddr()))
	if err != nil {
		t.Fatal(err)
	}
	leaf := svid.Certificates[0]
	if ttl := leaf.NotAfter.Sub(leaf.NotBefore); ttl > 2*time.Minute || ttl < 30*time.Second {
		t.Fatalf("SVID lifetime %v, want about 1m", ttl)
	}
	if svid.ID.String() != "spiffe://example.org/e2e-test" {
		t.Fatalf("SVID for %s", svid.ID)
	}
}

// recordingAuthz is an in-process ext_authz server standing in for
// mandate-authz: it allows agent A (removing x-mandate), denies everything
// else with a 403 JSON body, and records what it was asked.
type recordingAuthz struct {
	authv3.UnimplementedAuthorizationServer
	mu   sync.Mutex
	reqs []*authv3.CheckRequest
}

func (a *recordingAuthz) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	if id, ok := grpccredentials.PeerIDFromContext(ctx); !ok || id.String() != frontproxyID {
		return nil, status.Error(codes.PermissionDenied, "caller is not the front proxy")
	}
	a.mu.Lock()
	a.reqs = append(a.reqs, req)
	a.mu.Unlock()
	if req.GetAttributes().GetSource().GetPrincipal() == agentAID {
		return &authv3.CheckResponse{
			Status: &rpcstatus.Status{Code: int32(code.Code_OK)},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
				Headers: []*corev3.HeaderValueOption{{
					Header:       &corev3.HeaderValue{Key: "x-mandate-decision", Value: "allow"},
					AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
				}},
				HeadersToRemove: []string{"x-mandate"},
			}},
		}, nil
	}
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(code.Code_PERMISSION_DENIED)},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode_Forbidden},
			Body:   `{"decision":"deny"}`,
		}},
	}, nil
}

func (a *recordingAuthz) principals() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, r := range a.reqs {
		out = append(out, r.GetAttributes().GetSource().GetPrincipal())
	}
	return out
}

// TestFrontProxyWithSpireSVIDs runs the front proxy, the echo upstream and
// two agents with real SPIRE SVIDs, and an in-process authz (the test
// binary registered as mandate-authz): agent A is allowed and its mandate
// header never reaches the upstream, agent B and a plaintext request are
// denied without reaching it.
func TestFrontProxyWithSpireSVIDs(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testBudget)
	defer cancel()
	env := startSpire(t, ctx)
	b := spire.NewBuilder(t)
	bins := map[string]string{}
	for name, pkg := range map[string]string{"agent-a": "testagent", "agent-b": "testagent", "frontproxy": "frontproxy", "echo": "echo"} {
		p, err := b.Build(ctx, modPrefix+pkg, name)
		if err != nil {
			t.Fatal(err)
		}
		bins[name] = p
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for id, bin := range map[string]string{agentAID: bins["agent-a"], agentBID: bins["agent-b"], frontproxyID: bins["frontproxy"], fakeAuthzID: self} {
		sel, err := spire.PathSelector(bin)
		if err != nil {
			t.Fatal(err)
		}
		// Create all entries, then wait for one sync covering them all.
		if err := env.CreateEntry(ctx, id, sel); err != nil {
			t.Fatal(err)
		}
	}
	if err := env.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}

	// In-process authz with the test binary's own SVID.
	source, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(env.SocketAddr())))
	if err != nil {
		t.Fatal(err)
	}
	defer source.Close()
	if svid, err := source.GetX509SVID(); err != nil || svid.ID.String() != fakeAuthzID {
		t.Fatalf("test binary SVID = %v, %v", svid, err)
	}
	authz := &recordingAuthz{}
	gs := grpc.NewServer(grpc.Creds(grpccredentials.MTLSServerCredentials(source, source,
		tlsconfig.AuthorizeID(spiffeid.RequireFromString(frontproxyID)))))
	authv3.RegisterAuthorizationServer(gs, authz)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(ln) }()
	defer gs.Stop()

	dir := t.TempDir()
	echoAddrFile := filepath.Join(dir, "echo.addr")
	if _, err := proc.Start(t, proc.Spec{Name: "echo", Path: bins["echo"], Args: []string{"-addr-file", echoAddrFile}}); err != nil {
		t.Fatal(err)
	}
	echoAddr, err := proc.WaitFile(ctx, echoAddrFile)
	if err != nil {
		t.Fatal(err)
	}
	proxyAddrFile := filepath.Join(dir, "proxy.addr")
	if _, err := proc.Start(t, proc.Spec{Name: "frontproxy", Path: bins["frontproxy"], Env: env.WorkloadEnv(), Args: []string{
		"-upstream", "http://" + string(echoAddr), "-authz", ln.Addr().String(), "-authz-id", fakeAuthzID,
		"-addr-file", proxyAddrFile, "-timeout", "2s",
		"-routes-json", `[{"prefix":"/","context_extensions":{"dest":"echo"}}]`,
	}}); err != nil {
		t.Fatal(err)
	}
	raw, err := proc.WaitFile(ctx, proxyAddrFile)
	if err != nil {
		t.Fatal(err)
	}
	var paddr struct{ TLS, Plain string }
	if err := json.Unmarshal(raw, &paddr); err != nil {
		t.Fatal(err)
	}
	agentArgs := []string{"-proxy", "https://" + paddr.TLS, "-plain-proxy", "http://" + paddr.Plain, "-server-id", frontproxyID}
	sessA, err := agentproto.Start(t, "agent-a", bins["agent-a"], env.WorkloadEnv(), agentArgs...)
	if err != nil {
		t.Fatal(err)
	}
	sessB, err := agentproto.Start(t, "agent-b", bins["agent-b"], env.WorkloadEnv(), agentArgs...)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name       string
		sess       *agentproto.Session
		cmd        agentproto.Command
		wantStatus int
		wantID     string
		principal  string
		upstream   bool
	}{
		{"agent A allowed", sessA, agentproto.Command{ID: "1", Op: agentproto.OpRequest, Method: "POST", Path: "/tools/search?q=1", Mandate: "tok.en.sig"}, 200, agentAID, agentAID, true},
		{"agent B denied", sessB, agentproto.Command{ID: "2", Op: agentproto.OpRequest, Path: "/tools/search", Mandate: "tok.en.sig"}, 403, agentBID, agentBID, false},
		{"no mTLS denied", sessA, agentproto.Command{ID: "3", Op: agentproto.OpRequest, Path: "/tools/search", Plain: true}, 403, agentAID, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(seen(t, ctx, string(echoAddr)))
			n := len(authz.principals())
			r, err := tc.sess.Do(ctx, tc.cmd)
			if err != nil {
				t.Fatal(err)
			}
			if r.Error != "" || r.Status != tc.wantStatus || r.SPIFFEID != tc.wantID {
				t.Fatalf("response %+v, want status %d as %s", r, tc.wantStatus, tc.wantID)
			}
			if got := authz.principals()[n:]; len(got) != 1 || got[0] != tc.principal {
				t.Fatalf("authz saw principals %q, want [%q]", got, tc.principal)
			}
			after := seen(t, ctx, string(echoAddr))
			if reached := len(after) > before; reached != tc.upstream {
				t.Fatalf("upstream reached = %v, want %v", reached, tc.upstream)
			}
			if tc.upstream {
				last := after[len(after)-1]
				if _, ok := last.Headers["X-Mandate"]; ok {
					t.Fatal("x-mandate reached the upstream")
				}
				if last.Headers["X-Mandate-Decision"][0] != "allow" || last.RequestURI != tc.cmd.Path {
					t.Fatalf("upstream saw %+v", last)
				}
			} else if !strings.Contains(r.Body, "deny") && tc.principal != "" {
				t.Fatalf("deny body %q", r.Body)
			}
		})
	}
}

type seenRequest struct {
	RequestURI string              `json:"request_uri"`
	Headers    map[string][]string `json:"headers"`
}

func seen(t *testing.T, ctx context.Context, echoAddr string) []seenRequest {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+echoAddr+"/_seen", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []seenRequest
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestTwoSpireServersSideBySide: two SPIRE servers run at once on one
// machine, neither on SPIRE's default port 8081 (held here when free),
// as two CI runs side by side need. SPIRE 1.13.3 turns bind_port 0 into
// 8081, so the harness must pick the ports.
func TestTwoSpireServersSideBySide(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testBudget)
	defer cancel()
	if l, err := net.Listen("tcp", "127.0.0.1:8081"); err == nil {
		defer l.Close()
	}
	a := startSpire(t, ctx)
	b := startSpire(t, ctx)
	if a.ServerAddr() == b.ServerAddr() || strings.HasSuffix(a.ServerAddr(), ":8081") || strings.HasSuffix(b.ServerAddr(), ":8081") {
		t.Fatalf("server addresses %s and %s: want two distinct ports, not 8081", a.ServerAddr(), b.ServerAddr())
	}
}
