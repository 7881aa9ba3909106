package frontproxy

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/genproto/googleapis/rpc/code"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

const (
	proxyID  = "spiffe://example.org/frontproxy"
	authzID  = "spiffe://example.org/mandate-authz"
	agentAID = "spiffe://example.org/agent/a"
	agentBID = "spiffe://example.org/agent/b"
)

// fakeAuthz records every CheckRequest and answers with respond.
type fakeAuthz struct {
	authv3.UnimplementedAuthorizationServer
	name    string
	respond func(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error)

	mu   sync.Mutex
	reqs []*authv3.CheckRequest
	srv  *grpc.Server
	addr string
}

func (f *fakeAuthz) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	if id, ok := grpccredentials.PeerIDFromContext(ctx); !ok || id.String() != proxyID {
		return nil, status.Error(codes.PermissionDenied, "caller is not the proxy")
	}
	f.mu.Lock()
	f.reqs = append(f.reqs, req)
	f.mu.Unlock()
	return f.respond(ctx, req)
}

func (f *fakeAuthz) requests() []*authv3.CheckRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*authv3.CheckRequest(nil), f.reqs...)
}

func allow(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(code.Code_OK)}}, nil
}

func startFakeAuthz(t *testing.T, ca *testCA, name string, respond func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error)) *fakeAuthz {
	t.Helper()
	f := &fakeAuthz{name: name, respond: respond}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	creds := grpccredentials.MTLSServerCredentials(ca.svid(t, authzID), ca.bundle(), tlsconfig.AuthorizeID(spiffeid.RequireFromString(proxyID)))
	f.srv = grpc.NewServer(grpc.Creds(creds))
	authv3.RegisterAuthorizationServer(f.srv, f)
	f.addr = ln.Addr().String()
	go func() { _ = f.srv.Serve(ln) }()
	t.Cleanup(f.srv.Stop)
	return f
}

// upstream records what reached it.
type upstream struct {
	mu   sync.Mutex
	seen []*http.Request
	srv  *httptest.Server
}

func startUpstream(t *testing.T) *upstream {
	t.Helper()
	u := &upstream{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.seen = append(u.seen, r.Clone(context.Background()))
		u.mu.Unlock()
		w.Header().Set("X-Upstream", "yes")
		_, _ = io.WriteString(w, "upstream:"+r.RequestURI)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstream) requests() []*http.Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]*http.Request(nil), u.seen...)
}

type harness struct {
	ca       *testCA
	authz    []*fakeAuthz
	up       *upstream
	ln       *Listeners
	proxySV  *x509svid.SVID
	clientA  *http.Client
	clientB  *http.Client
	plain    *http.Client
	tlsBase  string
	plainURL string
	leafA    *x509.Certificate
}

type harnessOpts struct {
	routes        []Route
	timeout       time.Duration
	statusOnError int
	responders    []func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error)
}

func newHarness(t *testing.T, o harnessOpts) *harness {
	t.Helper()
	h := &harness{ca: newTestCA(t), up: startUpstream(t)}
	if len(o.responders) == 0 {
		o.responders = append(o.responders, allow)
	}
	if o.timeout == 0 {
		// Envoy's 200 ms default is the proxy's; a test that is not about
		// the timeout must not fail because a loaded machine is slow to
		// finish the first mTLS handshake with the authz server.
		o.timeout = 10 * time.Second
	}
	var addrs []string
	for i, r := range o.responders {
		f := startFakeAuthz(t, h.ca, "authz-"+string(rune('a'+i)), r)
		h.authz = append(h.authz, f)
		addrs = append(addrs, f.addr)
	}
	h.proxySV = h.ca.svid(t, proxyID)
	bundle := h.ca.bundle()
	cc, err := DialAuthz(addrs, grpccredentials.MTLSClientCredentials(h.proxySV, bundle, tlsconfig.AuthorizeID(spiffeid.RequireFromString(authzID))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	upURL, _ := url.Parse(h.up.srv.URL)
	p, err := New(Config{
		Authz: authv3.NewAuthorizationClient(cc), Upstream: upURL, Routes: o.routes,
		Timeout: o.timeout, StatusOnError: o.statusOnError,
		IncludePeerCertificate: true, LocalPrincipal: proxyID,
	})
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg := tlsconfig.MTLSServerConfig(h.proxySV, bundle, tlsconfig.AuthorizeMemberOf(h.ca.td))
	h.ln, err = Listen(p, "127.0.0.1:0", "127.0.0.1:0", tlsCfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = h.ln.Close(ctx)
	})
	mk := func(id string) *http.Client {
		sv := h.ca.svid(t, id)
		if id == agentAID {
			h.leafA = sv.Certificates[0]
		}
		cfg := tlsconfig.MTLSClientConfig(sv, bundle, tlsconfig.AuthorizeID(spiffeid.RequireFromString(proxyID)))
		tr := &http.Transport{TLSClientConfig: cfg}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 10 * time.Second}
	}
	h.clientA, h.clientB = mk(agentAID), mk(agentBID)
	ptr := &http.Transport{}
	t.Cleanup(ptr.CloseIdleConnections)
	h.plain = &http.Client{Transport: ptr, Timeout: 10 * time.Second}
	h.tlsBase = "https://" + h.ln.TLSAddr()
	h.plainURL = "http://" + h.ln.PlainAddr()
	return h
}

type result struct {
	status int
	header http.Header
	body   string
}

func do(t *testing.T, c *http.Client, method, u string, hdr http.Header) result {
	t.Helper()
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range hdr {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return result{resp.StatusCode, resp.Header, string(b)}
}

func TestCheckRequestIsBuiltAsEnvoyDoes(t *testing.T) {
	h := newHarness(t, harnessOpts{routes: []Route{{Prefix: "/", ContextExtensions: map[string]string{"dest": "echo"}}}})
	hdr := http.Header{}
	hdr.Add("X-Dup", "one")
	hdr.Add("X-Dup", "two")
	hdr.Set("Mixed-Case-Name", "V")
	hdr.Set("X-Mandate", "tok.en.sig")
	hdr.Set("X-Bin", "a\xffb")
	hdr.Set("X-Envoy-Downstream-Service-Cluster", "spoofed")
	before := time.Now()
	r := do(t, h.clientA, http.MethodGet, h.tlsBase+"/api/items?x=1&y=2", hdr)
	if r.status != http.StatusOK || r.body != "upstream:/api/items?x=1&y=2" {
		t.Fatalf("got %d %q", r.status, r.body)
	}
	reqs := h.authz[0].requests()
	if len(reqs) != 1 {
		t.Fatalf("authz saw %d requests, want 1", len(reqs))
	}
	a := reqs[0].GetAttributes()
	hr := a.GetRequest().GetHttp()
	wantHeaders := map[string]string{
		"x-dup":             "one,two",
		"mixed-case-name":   "V",
		"x-mandate":         "tok.en.sig",
		"x-bin":             "a!b",
		":authority":        h.ln.TLSAddr(),
		":method":           "GET",
		":path":             "/api/items?x=1&y=2",
		":scheme":           "https",
		"x-forwarded-proto": "https",
	}
	for k, v := range wantHeaders {
		if got, ok := hr.GetHeaders()[k]; !ok || got != v {
			t.Errorf("header %q = %q (present %v), want %q", k, got, ok, v)
		}
	}
	for k := range hr.GetHeaders() {
		if k != strings.ToLower(k) {
			t.Errorf("header key %q not lowercased", k)
		}
	}
	if _, ok := hr.GetHeaders()["host"]; ok {
		t.Error("host must appear as :authority only")
	}
	if hr.GetHeaders()["x-request-id"] == "" {
		t.Error("x-request-id not generated")
	}
	if hr.GetMethod() != "GET" || hr.GetPath() != "/api/items?x=1&y=2" || hr.GetHost() != h.ln.TLSAddr() ||
		hr.GetScheme() != "https" || hr.GetProtocol() != "HTTP/1.1" || hr.GetId() == "" || hr.GetSize() != -1 {
		t.Errorf("http request attributes = %v", hr)
	}
	if ts := a.GetRequest().GetTime().AsTime(); ts.Before(before.Add(-time.Second)) || ts.After(time.Now()) {
		t.Errorf("request.time = %v", ts)
	}
	src, dst := a.GetSource(), a.GetDestination()
	if src.GetPrincipal() != agentAID {
		t.Errorf("source.principal = %q, want %q", src.GetPrincipal(), agentAID)
	}
	if src.GetService() != "spoofed" {
		t.Errorf("source.service = %q, want the client-set header value", src.GetService())
	}
	if sa := src.GetAddress().GetSocketAddress(); sa.GetAddress() != "127.0.0.1" || sa.GetPortValue() == 0 {
		t.Errorf("source.address = %v", sa)
	}
	if dst.GetPrincipal() != proxyID {
		t.Errorf("destination.principal = %q, want %q", dst.GetPrincipal(), proxyID)
	}
	if sa := dst.GetAddress().GetSocketAddress(); net.JoinHostPort(sa.GetAddress(), itoa(sa.GetPortValue())) != h.ln.TLSAddr() {
		t.Errorf("destination.address = %v, want %s", sa, h.ln.TLSAddr())
	}
	pemText, err := url.QueryUnescape(src.GetCertificate())
	if err != nil {
		t.Fatalf("certificate not URL-encoded: %v", err)
	}
	blk, _ := pem.Decode([]byte(pemText))
	if blk == nil || string(blk.Bytes) != string(h.leafA.Raw) {
		t.Errorf("source.certificate is not the agent's leaf: %q", src.GetCertificate())
	}
	if strings.ContainsAny(src.GetCertificate(), "\n /+=") {
		t.Errorf("certificate has unencoded characters")
	}
	if got := a.GetContextExtensions(); len(got) != 1 || got["dest"] != "echo" {
		t.Errorf("context_extensions = %v", got)
	}
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

func TestPrincipalPerIdentityAndPlaintext(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	do(t, h.clientA, http.MethodGet, h.tlsBase+"/x", nil)
	do(t, h.clientB, http.MethodGet, h.tlsBase+"/x", nil)
	do(t, h.plain, http.MethodGet, h.plainURL+"/x", nil)
	reqs := h.authz[0].requests()
	if len(reqs) != 3 {
		t.Fatalf("authz saw %d requests", len(reqs))
	}
	tests := []struct {
		principal, destPrincipal, scheme string
		hasCert                          bool
	}{
		{agentAID, proxyID, "https", true},
		{agentBID, proxyID, "https", true},
		{"", "", "http", false},
	}
	for i, tc := range tests {
		a := reqs[i].GetAttributes()
		if a.GetSource().GetPrincipal() != tc.principal || a.GetDestination().GetPrincipal() != tc.destPrincipal ||
			a.GetRequest().GetHttp().GetScheme() != tc.scheme || (a.GetSource().GetCertificate() != "") != tc.hasCert {
			t.Errorf("request %d: source=%v destination=%v scheme=%q", i, a.GetSource(), a.GetDestination(), a.GetRequest().GetHttp().GetScheme())
		}
	}
}

func TestRoutesContextExtensionsAndDisabled(t *testing.T) {
	h := newHarness(t, harnessOpts{routes: []Route{
		{Prefix: "/api", ContextExtensions: map[string]string{"dest": "api"}},
		{Prefix: "/api/admin", ContextExtensions: map[string]string{"dest": "admin", "risk": "high"}},
		{Prefix: "/healthz", Disabled: true},
	}})
	tests := []struct {
		path       string
		wantStatus int
		wantExt    map[string]string // nil = authz must not be called
		upstream   bool
	}{
		{"/api/items", 200, map[string]string{"dest": "api"}, true},
		{"/api/admin/users?x=1", 200, map[string]string{"dest": "admin", "risk": "high"}, true},
		{"/healthz", 200, nil, true},
		{"/elsewhere", 404, nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			nAuthz, nUp := len(h.authz[0].requests()), len(h.up.requests())
			r := do(t, h.clientA, http.MethodGet, h.tlsBase+tc.path, nil)
			if r.status != tc.wantStatus {
				t.Fatalf("status %d, want %d", r.status, tc.wantStatus)
			}
			reqs := h.authz[0].requests()[nAuthz:]
			if tc.wantExt == nil {
				if len(reqs) != 0 {
					t.Fatalf("authz called %d times, want 0", len(reqs))
				}
			} else {
				if len(reqs) != 1 {
					t.Fatalf("authz called %d times, want 1", len(reqs))
				}
				got := reqs[0].GetAttributes().GetContextExtensions()
				if len(got) != len(tc.wantExt) {
					t.Fatalf("context_extensions = %v, want %v", got, tc.wantExt)
				}
				for k, v := range tc.wantExt {
					if got[k] != v {
						t.Fatalf("context_extensions = %v, want %v", got, tc.wantExt)
					}
				}
			}
			if got := len(h.up.requests()) - nUp; (got == 1) != tc.upstream {
				t.Fatalf("upstream reached %d times, want reached=%v", got, tc.upstream)
			}
		})
	}
}

func hvo(k, v string, action corev3.HeaderValueOption_HeaderAppendAction) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: v}, AppendAction: action}
}

func TestOkResponseMutations(t *testing.T) {
	respond := func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
		return &authv3.CheckResponse{
			Status: &rpcstatus.Status{Code: int32(code.Code_OK)},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
				Headers: []*corev3.HeaderValueOption{
					hvo("x-mandate-decision", "d-1", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD),
					hvo("x-overwrite", "new", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD),
					hvo("x-only-if-exists", "nope", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS),
					hvo("x-if-absent", "ignored", corev3.HeaderValueOption_ADD_IF_ABSENT),
					hvo("x-added", "second", corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD),
					{Header: &corev3.HeaderValue{Key: "x-legacy", Value: "more"}, Append: wrapperspb.Bool(true)},
				},
				HeadersToRemove:         []string{"x-mandate", ":path", "host", "Host"},
				ResponseHeadersToAdd:    []*corev3.HeaderValueOption{hvo("x-mandate-decision-id", "d-1", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD)},
				QueryParametersToSet:    []*corev3.QueryParameter{{Key: "tenant", Value: "t1"}},
				QueryParametersToRemove: []string{"secret"},
			}},
		}, nil
	}
	h := newHarness(t, harnessOpts{responders: []func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error){respond}})
	hdr := http.Header{}
	hdr.Set("X-Mandate", "tok.en.sig")
	hdr.Set("X-Overwrite", "old")
	hdr.Set("X-If-Absent", "orig")
	hdr.Set("X-Added", "first")
	hdr.Set("X-Legacy", "base")
	r := do(t, h.clientA, http.MethodGet, h.tlsBase+"/p?secret=s&keep=1", hdr)
	if r.status != 200 || r.header.Get("X-Mandate-Decision-Id") != "d-1" || r.header.Get("X-Upstream") != "yes" {
		t.Fatalf("response %d %v", r.status, r.header)
	}
	ups := h.up.requests()
	if len(ups) != 1 {
		t.Fatalf("upstream saw %d requests", len(ups))
	}
	u := ups[0]
	if _, ok := u.Header["X-Mandate"]; ok {
		t.Error("x-mandate reached the upstream")
	}
	checks := map[string][]string{
		"X-Mandate-Decision": {"d-1"},
		"X-Overwrite":        {"new"},
		"X-Only-If-Exists":   nil,
		"X-If-Absent":        {"orig"},
		"X-Added":            {"first", "second"},
		"X-Legacy":           {"base,more"},
		"X-Forwarded-Proto":  {"https"},
	}
	for k, want := range checks {
		if got := u.Header.Values(k); strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("upstream %s = %q, want %q", k, got, want)
		}
	}
	if u.Host != h.ln.TLSAddr() {
		t.Errorf("upstream Host = %q, want the original authority %q", u.Host, h.ln.TLSAddr())
	}
	if q := u.URL.Query(); q.Get("secret") != "" || q.Get("keep") != "1" || q.Get("tenant") != "t1" || u.URL.Path != "/p" {
		t.Errorf("upstream URL = %q", u.RequestURI)
	}
}

func TestDeniesAndErrorsNeverReachUpstream(t *testing.T) {
	denied := func(st uint32, body string, hdrs ...*corev3.HeaderValueOption) func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
		return func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
			resp := &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(code.Code_PERMISSION_DENIED)}}
			if st != 0 || body != "" || len(hdrs) > 0 {
				dr := &authv3.DeniedHttpResponse{Body: body, Headers: hdrs}
				if st != 0 {
					dr.Status = &typev3.HttpStatus{Code: typev3.StatusCode(st)}
				}
				resp.HttpResponse = &authv3.CheckResponse_DeniedResponse{DeniedResponse: dr}
			}
			return resp, nil
		}
	}
	block := func(ctx context.Context, _ *authv3.CheckRequest) (*authv3.CheckResponse, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	tests := []struct {
		name       string
		respond    func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error)
		statusOnEr int
		wantStatus int
		wantBody   string
		wantHeader [2]string
		wantOut    string
	}{
		{name: "deny with status body headers", respond: denied(401, `{"reason":"step_up","approval":"ap-1"}`, hvo("x-mandate-approval", "ap-1", 0)),
			wantStatus: 401, wantBody: `{"reason":"step_up","approval":"ap-1"}`, wantHeader: [2]string{"X-Mandate-Approval", "ap-1"}, wantOut: OutcomeDenied},
		{name: "deny without denied_response is 403", respond: denied(0, ""), wantStatus: 403, wantOut: OutcomeDenied},
		{name: "any non-OK status code is a deny", respond: func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
			return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(code.Code_UNAVAILABLE)}}, nil
		}, wantStatus: 403, wantOut: OutcomeDenied},
		{name: "missing status is OK", respond: func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
			return &authv3.CheckResponse{}, nil
		}, wantStatus: 200},
		{name: "grpc error is status_on_error", respond: func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
			return nil, status.Error(codes.Internal, "boom")
		}, wantStatus: 403, wantOut: OutcomeError},
		{name: "custom status_on_error", statusOnEr: 503, respond: func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
			return nil, errors.New("boom")
		}, wantStatus: 503, wantOut: OutcomeError},
		{name: "timeout is status_on_error", respond: block, wantStatus: 403, wantOut: OutcomeError},
		{name: "error_response", respond: func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
			return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(code.Code_UNAVAILABLE)},
				HttpResponse: &authv3.CheckResponse_ErrorResponse{ErrorResponse: &authv3.DeniedHttpResponse{Body: "not ready"}}}, nil
		}, wantStatus: 403, wantBody: "not ready", wantOut: OutcomeError},
		{name: "invalid append_action fails closed", respond: func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
			return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(code.Code_OK)},
				HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
					Headers: []*corev3.HeaderValueOption{hvo("x-a", "b", 42)}}}}, nil
		}, wantStatus: 403, wantOut: OutcomeError},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, harnessOpts{timeout: 150 * time.Millisecond, statusOnError: tc.statusOnEr,
				responders: []func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error){tc.respond}})
			start := time.Now()
			r := do(t, h.clientA, http.MethodPost, h.tlsBase+"/pay", http.Header{"X-Mandate": {"t"}})
			if el := time.Since(start); el > 3*time.Second {
				t.Fatalf("took %v", el)
			}
			if r.status != tc.wantStatus {
				t.Fatalf("status %d, want %d (body %q)", r.status, tc.wantStatus, r.body)
			}
			if tc.wantBody != "" && r.body != tc.wantBody {
				t.Fatalf("body %q, want %q", r.body, tc.wantBody)
			}
			if tc.wantHeader[0] != "" && r.header.Get(tc.wantHeader[0]) != tc.wantHeader[1] {
				t.Fatalf("header %s = %q", tc.wantHeader[0], r.header.Get(tc.wantHeader[0]))
			}
			if r.header.Get(OutcomeHeader) != tc.wantOut {
				t.Fatalf("outcome %q, want %q", r.header.Get(OutcomeHeader), tc.wantOut)
			}
			reached := len(h.up.requests()) > 0
			if reached != (tc.wantStatus == 200) {
				t.Fatalf("upstream reached = %v with status %d", reached, r.status)
			}
		})
	}
}

func TestUnreachableAuthzFailsClosed(t *testing.T) {
	ca := newTestCA(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	sv := ca.svid(t, proxyID)
	cc, err := DialAuthz([]string{dead}, grpccredentials.MTLSClientCredentials(sv, ca.bundle(), tlsconfig.AuthorizeAny()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	up := startUpstream(t)
	upURL, _ := url.Parse(up.srv.URL)
	p, err := New(Config{Authz: authv3.NewAuthorizationClient(cc), Upstream: upURL})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	p.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/x", nil))
	if rec.Code != http.StatusForbidden || len(up.requests()) != 0 {
		t.Fatalf("status %d, upstream %d", rec.Code, len(up.requests()))
	}
}

func TestRoundRobinAndReplicaLoss(t *testing.T) {
	h := newHarness(t, harnessOpts{responders: []func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error){allow, allow}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Both replicas get traffic (round robin once both are connected).
	for len(h.authz[0].requests()) == 0 || len(h.authz[1].requests()) == 0 {
		if ctx.Err() != nil {
			t.Fatalf("traffic did not reach both replicas: %d, %d", len(h.authz[0].requests()), len(h.authz[1].requests()))
		}
		if r := do(t, h.clientA, http.MethodGet, h.tlsBase+"/x", nil); r.status != 200 {
			t.Fatalf("status %d", r.status)
		}
	}
	h.authz[0].srv.Stop()
	// Requests right after the loss may fail (403, never forwarded); the
	// channel must then converge on the survivor.
	ok := 0
	for ok < 10 {
		if ctx.Err() != nil {
			t.Fatal("requests never converged on the surviving replica")
		}
		nUp := len(h.up.requests())
		r := do(t, h.clientA, http.MethodGet, h.tlsBase+"/x", nil)
		switch r.status {
		case 200:
			ok++
		case 403:
			ok = 0
			if len(h.up.requests()) != nUp {
				t.Fatal("a failed check was forwarded")
			}
		default:
			t.Fatalf("status %d", r.status)
		}
	}
}

func TestConfigValidation(t *testing.T) {
	up, _ := url.Parse("http://127.0.0.1:1")
	client := authv3.NewAuthorizationClient(nil)
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no authz", Config{Upstream: up}},
		{"no upstream", Config{Authz: client}},
		{"bad upstream scheme", Config{Authz: client, Upstream: &url.URL{Scheme: "ftp", Host: "x"}}},
		{"negative timeout", Config{Authz: client, Upstream: up, Timeout: -1}},
		{"bad status", Config{Authz: client, Upstream: up, StatusOnError: 42}},
		{"relative prefix", Config{Authz: client, Upstream: up, Routes: []Route{{Prefix: "api"}}}},
		{"duplicate prefix", Config{Authz: client, Upstream: up, Routes: []Route{{Prefix: "/a"}, {Prefix: "/a"}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil {
				t.Fatal("New accepted an invalid config")
			}
		})
	}
	if _, err := New(Config{Authz: client, Upstream: up}); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
}

func TestWithRequestBody(t *testing.T) {
	h := newHarness(t, harnessOpts{routes: []Route{
		{Prefix: "/mcp", ContextExtensions: map[string]string{"protocol": "mcp"},
			WithRequestBody: &BufferSettings{MaxRequestBytes: 16, PackAsBytes: true}},
		{Prefix: "/partial", WithRequestBody: &BufferSettings{MaxRequestBytes: 4, AllowPartialMessage: true}},
		{Prefix: "/"},
	}})
	post := func(path, body string) int {
		resp, err := h.clientA.Post(h.tlsBase+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if st := post("/mcp", "{\"a\":\"\xff\"}"); st != http.StatusOK {
		t.Fatalf("status %d", st)
	}
	reqs := h.authz[0].requests()
	last := reqs[len(reqs)-1].GetAttributes().GetRequest().GetHttp()
	if string(last.GetRawBody()) != "{\"a\":\"\xff\"}" || last.GetBody() != "" || last.GetHeaders()[HeaderPartialBody] != "" {
		t.Fatalf("check request body %q raw %q", last.GetBody(), last.GetRawBody())
	}
	if up := h.up.requests(); len(up) != 1 {
		t.Fatalf("upstream saw %d requests", len(up))
	}
	// Over the limit without partial messages: 413, never checked or forwarded.
	n := len(h.authz[0].requests())
	if st := post("/mcp", strings.Repeat("x", 17)); st != http.StatusRequestEntityTooLarge {
		t.Fatalf("over the limit: status %d", st)
	}
	if len(h.authz[0].requests()) != n || len(h.up.requests()) != 1 {
		t.Fatal("an over-limit body was checked or forwarded")
	}
	// With partial messages: the first bytes, marked, as a string.
	if st := post("/partial", "abcdefgh"); st != http.StatusOK {
		t.Fatalf("partial: status %d", st)
	}
	reqs = h.authz[0].requests()
	last = reqs[len(reqs)-1].GetAttributes().GetRequest().GetHttp()
	if last.GetBody() != "abcd" || last.GetHeaders()[HeaderPartialBody] != "true" {
		t.Fatalf("partial body %q headers %v", last.GetBody(), last.GetHeaders())
	}
	// Routes without the setting send no body.
	if st := post("/other", "abc"); st != http.StatusOK {
		t.Fatalf("status %d", st)
	}
	reqs = h.authz[0].requests()
	if b := reqs[len(reqs)-1].GetAttributes().GetRequest().GetHttp(); b.GetBody() != "" || len(b.GetRawBody()) != 0 {
		t.Fatal("a route without with_request_body sent the body")
	}
	// The upstream gets the whole body in each case.
	for _, r := range h.up.requests() {
		if r.ContentLength == 0 {
			t.Fatalf("upstream request %s without body", r.RequestURI)
		}
	}
}
