// Command testagent is the end-to-end suite's AI agent stand-in: it takes its
// X509-SVID from the SPIFFE Workload API (SPIFFE_ENDPOINT_SOCKET) and sends
// HTTP requests over mTLS to the front proxy, printing one JSON line per
// answer (see e2e/internal/agentproto).
//
// Modes:
//
//	-mode whoami  print {"spiffe_id": ...} once the SVID is available, exit
//	-mode once    one request from -method/-path/-header/-mandate/-body
//	-mode serve   one agentproto.Command per stdin line until EOF
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mandate-dev/mandate/e2e/internal/agentproto"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

type headerFlags map[string]string

func (h headerFlags) String() string { return fmt.Sprint(map[string]string(h)) }
func (h headerFlags) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("header %q: want name=value", v)
	}
	h[k] = val
	return nil
}

type config struct {
	mode        string
	proxy       string
	plainProxy  string
	serverID    string
	timeout     time.Duration
	svidTimeout time.Duration
	cmd         agentproto.Command
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "testagent:", err)
		os.Exit(1)
	}
}

func run() error {
	var c config
	headers := headerFlags{}
	flag.StringVar(&c.mode, "mode", "once", "whoami | once | serve")
	flag.StringVar(&c.proxy, "proxy", "", "base URL of the proxy's mTLS listener (https://127.0.0.1:port)")
	flag.StringVar(&c.plainProxy, "plain-proxy", "", "base URL of the proxy's plaintext listener (http://127.0.0.1:port)")
	flag.StringVar(&c.serverID, "server-id", "", "SPIFFE ID the proxy must present (default: any ID of the agent's trust domain)")
	flag.DurationVar(&c.timeout, "timeout", 10*time.Second, "per-request timeout")
	flag.DurationVar(&c.svidTimeout, "svid-timeout", 60*time.Second, "how long to wait for the first SVID")
	flag.StringVar(&c.cmd.Method, "method", http.MethodGet, "once: HTTP method")
	flag.StringVar(&c.cmd.Path, "path", "/", "once: request target")
	flag.StringVar(&c.cmd.Mandate, "mandate", "", "once: x-mandate token")
	flag.StringVar(&c.cmd.Body, "body", "", "once: request body")
	flag.BoolVar(&c.cmd.Plain, "plain", false, "once: use the plaintext listener")
	flag.Var(headers, "header", "once: name=value request header (repeatable)")
	flag.Parse()
	c.cmd.Op = agentproto.OpRequest
	c.cmd.Headers = headers

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	sctx, cancel := context.WithTimeout(ctx, c.svidTimeout)
	source, err := workloadapi.NewX509Source(sctx)
	cancel()
	if err != nil {
		return fmt.Errorf("workload API: %w", err)
	}
	defer source.Close()
	svid, err := source.GetX509SVID()
	if err != nil {
		return fmt.Errorf("svid: %w", err)
	}
	log.Info("got SVID", "spiffe_id", svid.ID.String())

	authorizer := tlsconfig.AuthorizeMemberOf(svid.ID.TrustDomain())
	if c.serverID != "" {
		id, err := spiffeid.FromString(c.serverID)
		if err != nil {
			return fmt.Errorf("-server-id: %w", err)
		}
		authorizer = tlsconfig.AuthorizeID(id)
	}
	a := &agent{
		cfg:    c,
		source: source,
		tls: &http.Client{
			Timeout:   c.timeout,
			Transport: &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(source, source, authorizer), MaxIdleConnsPerHost: 32},
		},
		plain: &http.Client{Timeout: c.timeout, Transport: &http.Transport{MaxIdleConnsPerHost: 32}},
	}
	out := json.NewEncoder(os.Stdout)
	switch c.mode {
	case "whoami":
		return out.Encode(a.do(ctx, agentproto.Command{Op: agentproto.OpWhoami}))
	case "once":
		return out.Encode(a.do(ctx, c.cmd))
	case "serve":
		return a.serve(ctx, os.Stdin, out)
	default:
		return fmt.Errorf("unknown -mode %q", c.mode)
	}
}

type agent struct {
	cfg    config
	source *workloadapi.X509Source
	tls    *http.Client
	plain  *http.Client
}

func (a *agent) serve(ctx context.Context, in io.Reader, out *json.Encoder) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var cmd agentproto.Command
		var resp agentproto.Response
		if err := json.Unmarshal([]byte(line), &cmd); err != nil {
			resp = agentproto.Response{Error: "bad command: " + err.Error()}
		} else {
			resp = a.do(ctx, cmd)
		}
		if err := out.Encode(resp); err != nil {
			return fmt.Errorf("write response: %w", err)
		}
	}
	return sc.Err()
}

func (a *agent) currentID() string {
	svid, err := a.source.GetX509SVID()
	if err != nil {
		return ""
	}
	return svid.ID.String()
}

func (a *agent) ownSerial() string {
	svid, err := a.source.GetX509SVID()
	if err != nil || len(svid.Certificates) == 0 {
		return ""
	}
	return svid.Certificates[0].SerialNumber.Text(16)
}

func (a *agent) do(ctx context.Context, cmd agentproto.Command) agentproto.Response {
	resp := agentproto.Response{ID: cmd.ID, SPIFFEID: a.currentID(), OwnSerial: a.ownSerial()}
	switch cmd.Op {
	case agentproto.OpWhoami:
		if resp.SPIFFEID == "" {
			resp.Error = "no SVID"
		}
		return resp
	case agentproto.OpRequest:
	case agentproto.OpLoad:
		if cmd.Load == nil || cmd.Load.MaxMS <= 0 {
			resp.Error = "load needs load.max_ms > 0"
			return resp
		}
		resp.Results = a.load(ctx, cmd)
		return resp
	default:
		resp.Error = fmt.Sprintf("unknown op %q", cmd.Op)
		return resp
	}
	return a.request(ctx, cmd, resp, false)
}

// load runs cmd as steady traffic (agentproto.Load) and returns every result.
func (a *agent) load(ctx context.Context, cmd agentproto.Command) []agentproto.Result {
	l := *cmd.Load
	if l.Concurrency <= 0 {
		l.Concurrency = 1
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(l.MaxMS)*time.Millisecond)
	defer cancel()
	var smu sync.Mutex
	serials := map[string]bool{} // the agent's SVIDs the requests used
	stopped := func() bool {
		if ctx.Err() != nil {
			return true
		}
		smu.Lock()
		used := len(serials)
		smu.Unlock()
		if l.StopFile != "" && used >= l.MinOwnSerials {
			if _, err := os.Stat(l.StopFile); err == nil {
				return true
			}
		}
		return false
	}
	one := cmd
	one.Op, one.Load, one.NewConn = agentproto.OpRequest, nil, false
	results := make([][]agentproto.Result, l.Concurrency)
	var wg sync.WaitGroup
	for w := range l.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stopped() {
				start := time.Now()
				// Requests still running when the run ends are cut short
				// by ctx: they are reported with their error, so a test
				// can tell them from failures.
				r := a.request(context.WithoutCancel(ctx), one, agentproto.Response{OwnSerial: a.ownSerial()}, cmd.NewConn)
				res := agentproto.Result{StartNS: start.UnixNano(), EndNS: time.Now().UnixNano(), Status: r.Status,
					PeerSerial: r.PeerSerial, OwnSerial: r.OwnSerial, Error: r.Error}
				if v := r.Headers["X-Frontproxy-Outcome"]; len(v) > 0 {
					res.Outcome = v[0]
				}
				res.DecisionID, res.Reason = decisionOf(r)
				results[w] = append(results[w], res)
				if r.OwnSerial != "" {
					smu.Lock()
					serials[r.OwnSerial] = true
					smu.Unlock()
				}
				if l.IntervalMS > 0 {
					select {
					case <-ctx.Done():
					case <-time.After(time.Duration(l.IntervalMS) * time.Millisecond):
					}
				}
			}
		}()
	}
	wg.Wait()
	var out []agentproto.Result
	for _, rs := range results {
		out = append(out, rs...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].StartNS < out[j].StartNS })
	return out
}

// decisionOf reads the decision id (and a deny's reason) from a response:
// a deny body is {"decision_id","reason"}; an allowed request's body is the
// echo upstream's description of what it received, with the
// x-mandate-decision-id header the authorizer added.
func decisionOf(r agentproto.Response) (id, reason string) {
	var deny struct {
		DecisionID string `json:"decision_id"`
		Reason     string `json:"reason"`
	}
	if err := json.Unmarshal([]byte(r.Body), &deny); err == nil && deny.DecisionID != "" {
		return deny.DecisionID, deny.Reason
	}
	var echo struct {
		Headers map[string][]string `json:"headers"`
	}
	if err := json.Unmarshal([]byte(r.Body), &echo); err == nil {
		if v := echo.Headers["X-Mandate-Decision-Id"]; len(v) > 0 {
			return v[0], ""
		}
	}
	return "", ""
}

// request performs one HTTP request for cmd, filling resp.
func (a *agent) request(ctx context.Context, cmd agentproto.Command, resp agentproto.Response, closeAfter bool) agentproto.Response {
	client, base := a.tls, a.cfg.proxy
	if cmd.Plain {
		client, base = a.plain, a.cfg.plainProxy
	}
	if base == "" {
		resp.Error = "no proxy URL configured for this listener"
		return resp
	}
	if cmd.NewConn {
		client.CloseIdleConnections()
	}
	method := cmd.Method
	if method == "" {
		method = http.MethodGet
	}
	path := cmd.Path
	if path == "" {
		path = "/"
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(base, "/")+"/", strings.NewReader(cmd.Body))
	if err != nil {
		resp.Error = err.Error()
		return resp
	}
	setTarget(req.URL, path)
	for k, v := range cmd.Headers {
		if strings.EqualFold(k, "host") {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	if cmd.Mandate != "" {
		req.Header.Set("x-mandate", cmd.Mandate)
	}
	// Within a load run with new_conn: close the connection after this
	// request, so the next one makes a new handshake.
	req.Close = closeAfter
	r, err := client.Do(req)
	if err != nil {
		resp.Error = err.Error()
		return resp
	}
	defer r.Body.Close()
	body, err := io.ReadAll(io.LimitReader(r.Body, 4<<20))
	if err != nil && !errors.Is(err, io.EOF) {
		resp.Error = "read body: " + err.Error()
	}
	resp.Status = r.StatusCode
	resp.Headers = r.Header
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		resp.PeerSerial = r.TLS.PeerCertificates[0].SerialNumber.Text(16)
	}
	resp.Body = string(body)
	return resp
}

// setTarget makes the request line carry target exactly as given (no
// cleaning, no escaping): path-confusion tests depend on it. An opaque URL
// is sent verbatim except when it starts with "//" (it would read as a
// host), so those go through RawPath.
func setTarget(u *url.URL, target string) {
	if !strings.HasPrefix(target, "//") {
		u.Opaque = target
		return
	}
	p, q, _ := strings.Cut(target, "?")
	u.Path = p
	if dec, err := url.PathUnescape(p); err == nil {
		u.Path = dec
	}
	u.RawPath = p
	u.RawQuery = q
}
