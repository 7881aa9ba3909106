package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/e2e/internal/agentproto"
	"github.com/mandate-dev/mandate/e2e/internal/proc"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// idTest is the test binary's own identity, used only to read the
// certificates servers present (a TLS handshake, nothing else).
const idTest = "spiffe://example.org/e2e/test"

// rotationBudget: SVIDs of 1 minute are renewed at about 30s; the
// scenario waits for every process to rotate at least once.
const rotationBudget = 3 * time.Minute

// TestSVIDRotation is scenario 9: every SVID lives one minute (renewed at
// about 30 s). Under steady traffic, with a new agent->proxy handshake per
// request, the test waits until every process has presented a new
// certificate (agent: its own SVID; proxy: the certificate it serves the
// agents; authz replicas and cp: the certificate of their listeners, read
// with a TLS handshake by the test binary; the agent's load goes on until
// its requests have used a second SVID) and asserts that no request
// failed. The persistent proxy->authz and authz->cp connections keep their
// original handshake (TLS does not re-authenticate a live connection); the
// links are then shown to work with the new certificates: fresh mandatectl
// handshakes to cp and to each replica, and a revocation pushed over the
// replicas' xDS streams and enforced by both.
func TestSVIDRotation(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), rotationBudget)
	defer cancel()
	d := deploy(ctx, t, options{agents: []string{idWorker}, svidTTL: time.Minute, selfID: idTest})
	a := d.agent(t, idWorker)
	task := d.uniq("T9")
	base := "/s9/" + task
	tok, _ := d.issue(ctx, idWorker, task, "batch", "--methods", "GET", "--paths", base+"/**", "--ttl", "10m")

	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(d.env.SocketAddr())))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	servers := map[string]string{
		"frontproxy": d.proxyTLS, "authz-1": d.replicas[0].grpc, "authz-2": d.replicas[1].grpc,
		"mandate-cp xds": d.cpAddrs.XDS, "mandate-cp admin": d.cpAddrs.Admin,
	}
	serials := map[string]map[string]bool{}
	observe := func(ctx context.Context) error {
		for name, addr := range servers {
			c, err := presentedCert(ctx, src, addr)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if serials[name] == nil {
				serials[name] = map[string]bool{}
			}
			serials[name][c.SerialNumber.Text(16)] = true
		}
		return nil
	}
	if err := observe(ctx); err != nil {
		t.Fatal(err)
	}

	stop := filepath.Join(t.TempDir(), "stop")
	done := make(chan agentproto.Response, 1)
	go func() {
		r, err := a.Do(ctx, agentproto.Command{ID: "load", Op: agentproto.OpLoad, Method: "GET", Path: base + "/item",
			Mandate: tok, NewConn: true,
			Load: &agentproto.Load{Concurrency: 2, IntervalMS: 20, MaxMS: int(rotationBudget / time.Millisecond), StopFile: stop,
				MinOwnSerials: 2}})
		if err != nil {
			r.Error = err.Error()
		}
		done <- r
	}()
	start := time.Now()
	err = proc.Poll(ctx, time.Second, func(ctx context.Context) error {
		if err := observe(ctx); err != nil {
			return err
		}
		var pending []string
		for name, s := range serials {
			if len(s) < 2 {
				pending = append(pending, name)
			}
		}
		if len(pending) > 0 {
			return fmt.Errorf("not rotated yet: %s", strings.Join(pending, ", "))
		}
		return nil
	})
	rotated := time.Now()
	if err == nil {
		// Some traffic after the last rotation too.
		tm := time.NewTimer(2 * time.Second)
		select {
		case <-tm.C:
		case <-ctx.Done():
		}
	}
	if werr := os.WriteFile(stop, nil, 0o600); werr != nil {
		t.Fatal(werr)
	}
	res := <-done
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("every server certificate rotated within %v", rotated.Sub(start).Round(time.Second))
	if res.Error != "" {
		t.Fatalf("load: %s", res.Error)
	}

	own, peer := map[string]bool{}, map[string]bool{}
	var failed int
	for _, lr := range res.Results {
		own[lr.OwnSerial] = true
		peer[lr.PeerSerial] = true
		if lr.Error != "" || lr.Status != 200 {
			failed++
			t.Errorf("request at +%v failed: status %d outcome %q reason %q error %q",
				time.Unix(0, lr.StartNS).Sub(start).Round(time.Millisecond), lr.Status, lr.Outcome, lr.Reason, lr.Error)
		}
	}
	t.Logf("%d requests (a new handshake each), %d failed; agent SVIDs used %d, proxy certificates seen %d; server serials %v",
		len(res.Results), failed, len(own), len(peer), countSerials(serials))
	if len(own) < 2 {
		t.Errorf("the agent's SVID did not rotate during the run (%d serial)", len(own))
	}
	if len(peer) < 2 {
		t.Errorf("the agent saw no new proxy certificate (%d serial)", len(peer))
	}
	if got := len(d.seenWithPrefix(t, ctx, base)); got != len(res.Results)-failed {
		t.Errorf("upstream saw %d requests, %d allowed", got, len(res.Results)-failed)
	}

	// Fresh handshakes with the rotated certificates on the other links.
	for _, r := range d.replicas {
		out := d.ctl(ctx, "probe", "check", "--addr", r.grpc, "--server-id", idAuthz, "--principal", idWorker,
			"--destination", frontproxyID, "--method", "GET", "--path", base+"/item", "--mandate", tok)
		if out.code != 0 {
			t.Errorf("check on %s after rotation: %s", r.name, out)
		}
	}
	d.mustCtl(ctx, "operator", "revoke", "--task", task, "--for", "10m", "--reason", "e2e: after rotation", "--wait")
	for range 4 {
		r := do(t, ctx, a, agentproto.Command{Method: "GET", Path: base + "/item", Mandate: tok})
		if r.Status != 403 || parseDeny(t, r).Reason != "revoked" {
			t.Fatalf("after the revocation: %d %s", r.Status, r.Body)
		}
	}
}

func countSerials(m map[string]map[string]bool) map[string]int {
	out := map[string]int{}
	for k, v := range m {
		out[k] = len(v)
	}
	return out
}

// presentedCert returns the leaf certificate a TLS server at addr presents
// (the client offers the test binary's SVID; whether the server then
// admits it does not matter).
func presentedCert(ctx context.Context, src *workloadapi.X509Source, addr string) (*x509.Certificate, error) {
	var leaf *x509.Certificate
	cfg := &tls.Config{
		InsecureSkipVerify: true, // only reading the certificate, never trusting the connection
		NextProtos:         []string{"h2", "http/1.1"},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			svid, err := src.GetX509SVID()
			if err != nil {
				return nil, err
			}
			c := &tls.Certificate{PrivateKey: svid.PrivateKey}
			for _, x := range svid.Certificates {
				c.Certificate = append(c.Certificate, x.Raw)
			}
			return c, nil
		},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("no certificate")
			}
			c, err := x509.ParseCertificate(raw[0])
			leaf = c
			return err
		},
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := (&tls.Dialer{NetDialer: &net.Dialer{}, Config: cfg}).DialContext(dctx, "tcp", addr)
	if conn != nil {
		conn.Close()
	}
	if leaf != nil {
		return leaf, nil
	}
	if err == nil {
		err = errors.New("no certificate seen")
	}
	return nil, err
}
