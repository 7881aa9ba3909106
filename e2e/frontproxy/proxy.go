package frontproxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"sync"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// Proxy is the HTTP handler: route match, Check, then forward or reply.
type Proxy struct {
	cfg     Config
	forward *httputil.ReverseProxy
}

// New validates cfg and returns a Proxy.
func New(cfg Config) (*Proxy, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	p := &Proxy{cfg: cfg}
	up := cfg.Upstream
	p.forward = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			st := pr.In.Context().Value(stateKey{}).(*reqState)
			pr.Out.URL.Scheme = up.Scheme
			pr.Out.URL.Host = up.Host
			pr.Out.URL.Path = pr.In.URL.Path
			pr.Out.URL.RawPath = pr.In.URL.RawPath
			pr.Out.URL.RawQuery = st.rawQuery
			// Envoy forwards :authority unchanged unless told otherwise.
			pr.Out.Host = pr.In.Host
			pr.Out.Header = st.headers
		},
		ModifyResponse: func(resp *http.Response) error {
			st := resp.Request.Context().Value(stateKey{}).(*reqState)
			if st.ok != nil {
				return applyHeaderOptions(resp.Header, st.ok.GetResponseHeadersToAdd())
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			cfg.Logger.Warn("frontproxy: upstream error", "err", err)
			localReply(w, http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers", nil)
		},
	}
	return p, nil
}

type stateKey struct{}

// reqState carries the decision's mutations to the forwarding step.
type reqState struct {
	headers  http.Header
	rawQuery string
	ok       *authv3.OkHttpResponse
}

// Outcome names of what the proxy did, in the x-frontproxy-outcome header
// of local replies (tests read it to tell a deny from an error).
const (
	OutcomeDenied  = "denied"
	OutcomeError   = "error"
	OutcomeNoRoute = "no_route"
)

// OutcomeHeader is set on local replies only.
const OutcomeHeader = "X-Frontproxy-Outcome"

// ServeHTTP implements http.Handler.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := p.cfg.Now()
	route, ok := p.cfg.match(r.RequestURI)
	if !ok {
		localReply(w, http.StatusNotFound, "", http.Header{OutcomeHeader: {OutcomeNoRoute}})
		return
	}
	h := downstreamHeaders(r, requestScheme(r))
	st := &reqState{headers: h, rawQuery: r.URL.RawQuery}
	if !route.Disabled {
		var body []byte
		partial := false
		if bs := route.WithRequestBody; bs != nil {
			var tooLarge bool
			if body, tooLarge, partial = bufferBody(r, bs); tooLarge {
				// Envoy: 413 before any check when the buffer fills
				// and partial messages are not allowed.
				localReply(w, http.StatusRequestEntityTooLarge, "Payload Too Large", nil)
				return
			}
		}
		req := p.buildCheckRequest(r, h, route, start)
		attachBody(req, body, partial, route.WithRequestBody)
		ctx, cancel := context.WithTimeout(r.Context(), p.cfg.Timeout)
		resp, err := p.cfg.Authz.Check(ctx, req)
		cancel()
		if err != nil {
			p.cfg.Logger.Warn("frontproxy: ext_authz check failed", "err", err, "path", r.RequestURI)
			p.errorReply(w, nil)
			return
		}
		if !p.decide(w, resp, st) {
			return
		}
	}
	p.forward.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), stateKey{}, st)))
}

// decide applies a CheckResponse; it returns true when the request is to be
// forwarded (st then holds the mutations), false when a reply was sent.
func (p *Proxy) decide(w http.ResponseWriter, resp *authv3.CheckResponse, st *reqState) bool {
	if resp.GetStatus().GetCode() == int32(code.Code_OK) {
		okr := resp.GetOkResponse()
		// Reject the whole response on a bad append_action before
		// touching anything (fail closed).
		if checkHeaderOptions(okr.GetHeaders()) != nil || checkHeaderOptions(okr.GetResponseHeadersToAdd()) != nil {
			p.cfg.Logger.Warn("frontproxy: invalid append_action in ok_response")
			p.errorReply(w, nil)
			return false
		}
		_ = applyHeaderOptions(st.headers, okr.GetHeaders())
		removeHeaders(st.headers, okr.GetHeadersToRemove())
		st.rawQuery, _ = mutateQuery(st.rawQuery, okr.GetQueryParametersToSet(), okr.GetQueryParametersToRemove())
		st.ok = okr
		return true
	}
	if er := resp.GetErrorResponse(); er != nil {
		p.errorReply(w, er)
		return false
	}
	status := http.StatusForbidden
	dr := resp.GetDeniedResponse()
	if c := dr.GetStatus().GetCode(); c > 0 {
		status = int(c)
	}
	hdr := http.Header{}
	deniedHeaders(hdr, dr.GetHeaders())
	hdr.Set(OutcomeHeader, OutcomeDenied)
	localReply(w, status, dr.GetBody(), hdr)
	return false
}

// errorReply answers a Check error: status_on_error with an empty body, or
// the error_response's own status, headers and body.
func (p *Proxy) errorReply(w http.ResponseWriter, er *authv3.DeniedHttpResponse) {
	status := p.cfg.StatusOnError
	hdr := http.Header{}
	body := ""
	if er != nil {
		if c := er.GetStatus().GetCode(); c > 0 {
			status = int(c)
		}
		deniedHeaders(hdr, er.GetHeaders())
		body = er.GetBody()
	}
	hdr.Set(OutcomeHeader, OutcomeError)
	localReply(w, status, body, hdr)
}

func localReply(w http.ResponseWriter, status int, body string, hdr http.Header) {
	if status < 100 || status > 599 {
		status = http.StatusForbidden
	}
	for k, vs := range hdr {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	if body != "" && w.Header().Get("Content-Type") == "" {
		w.Header().Set("Content-Type", "text/plain")
	}
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

// DialAuthz connects to the ext_authz servers at addrs (host:port) with
// creds (mTLS in the suite). Several addresses are load-balanced
// round-robin over one channel: when a replica dies its connection drops and
// later requests go to the others; Checks already in flight to it, or
// routed to it before the drop is noticed, fail and get status_on_error
// (like Envoy without retries configured on the ext_authz cluster).
func DialAuthz(addrs []string, creds credentials.TransportCredentials) (*grpc.ClientConn, error) {
	if len(addrs) == 0 {
		return nil, errors.New("frontproxy: no authz addresses")
	}
	r := manual.NewBuilderWithScheme("frontproxy")
	state := resolver.State{}
	for _, a := range addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("frontproxy: authz address %q: %w", a, err)
		}
		state.Endpoints = append(state.Endpoints, resolver.Endpoint{Addresses: []resolver.Address{{Addr: a}}})
	}
	r.InitialState(state)
	cc, err := grpc.NewClient(r.Scheme()+":///authz",
		grpc.WithResolvers(r),
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`),
	)
	if err != nil {
		return nil, fmt.Errorf("frontproxy: dial authz: %w", err)
	}
	return cc, nil
}

// Listeners serves a Proxy on an mTLS listener and a plaintext one.
type Listeners struct {
	tlsLn, plainLn net.Listener
	srv            *http.Server
	wg             sync.WaitGroup
}

// Listen serves h on tlsAddr with tlsCfg (HTTP/1.1 and HTTP/2) and on
// plainAddr without TLS (requests there carry no principal, as on an Envoy
// listener without TLS). Either address may be empty to skip it.
func Listen(h http.Handler, tlsAddr, plainAddr string, tlsCfg *tls.Config) (*Listeners, error) {
	if tlsAddr == "" && plainAddr == "" {
		return nil, errors.New("frontproxy: no listen address")
	}
	l := &Listeners{srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, TLSConfig: tlsCfg}}
	if tlsAddr != "" {
		if tlsCfg == nil {
			return nil, errors.New("frontproxy: TLS listener needs a TLS config")
		}
		ln, err := net.Listen("tcp", tlsAddr)
		if err != nil {
			return nil, fmt.Errorf("frontproxy: listen %s: %w", tlsAddr, err)
		}
		l.tlsLn = ln
	}
	if plainAddr != "" {
		ln, err := net.Listen("tcp", plainAddr)
		if err != nil {
			if l.tlsLn != nil {
				l.tlsLn.Close()
			}
			return nil, fmt.Errorf("frontproxy: listen %s: %w", plainAddr, err)
		}
		l.plainLn = ln
	}
	if l.tlsLn != nil {
		l.wg.Add(1)
		go func() { defer l.wg.Done(); _ = l.srv.ServeTLS(l.tlsLn, "", "") }()
	}
	if l.plainLn != nil {
		l.wg.Add(1)
		go func() { defer l.wg.Done(); _ = l.srv.Serve(l.plainLn) }()
	}
	return l, nil
}

// TLSAddr is the mTLS listener's address ("" when none).
func (l *Listeners) TLSAddr() string { return addrOf(l.tlsLn) }

// PlainAddr is the plaintext listener's address ("" when none).
func (l *Listeners) PlainAddr() string { return addrOf(l.plainLn) }

func addrOf(ln net.Listener) string {
	if ln == nil {
		return ""
	}
	return ln.Addr().String()
}

// Close shuts both listeners down, waiting for in-flight requests until ctx ends.
func (l *Listeners) Close(ctx context.Context) error {
	err := l.srv.Shutdown(ctx)
	if err != nil {
		_ = l.srv.Close()
	}
	l.wg.Wait()
	if err != nil {
		return fmt.Errorf("frontproxy: shutdown: %w", err)
	}
	return nil
}

// bufferBody reads the request body as Envoy's ext_authz buffers it: up to
// MaxRequestBytes. It reports a body over the limit (tooLarge, when
// partial messages are not allowed) or a cut one (partial). The whole body
// read is put back for forwarding.
func bufferBody(r *http.Request, bs *BufferSettings) (body []byte, tooLarge, partial bool) {
	limit := int64(bs.MaxRequestBytes)
	all, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	rest := r.Body
	r.Body = io.NopCloser(io.MultiReader(bytes.NewReader(all), rest))
	if err != nil {
		return nil, true, false
	}
	if int64(len(all)) > limit {
		if !bs.AllowPartialMessage {
			return nil, true, false
		}
		return all[:limit], false, true
	}
	return all, false, false
}

// attachBody fills the check request's body as with_request_body does.
func attachBody(req *authv3.CheckRequest, body []byte, partial bool, bs *BufferSettings) {
	if bs == nil {
		return
	}
	h := req.GetAttributes().GetRequest().GetHttp()
	if partial {
		h.Headers[HeaderPartialBody] = "true"
	}
	if bs.PackAsBytes {
		h.RawBody = body
	} else {
		h.Body = sanitizeUTF8(string(body))
	}
}
