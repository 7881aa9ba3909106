// Command frontproxy runs the Envoy ext_authz contract proxy for tests
// (package e2e/frontproxy): agents connect over mTLS with their SVIDs (or in
// plaintext on a second listener), every request is checked with the
// ext_authz gRPC servers given by -authz, allowed ones are forwarded to
// -upstream. It takes its own SVID from the SPIFFE Workload API
// (SPIFFE_ENDPOINT_SOCKET). It is a test tool, not Envoy.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/mandate-dev/mandate/e2e/frontproxy"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// Addrs is the content of -addr-file.
type Addrs struct {
	TLS   string `json:"tls,omitempty"`
	Plain string `json:"plain,omitempty"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "frontproxy:", err)
		os.Exit(1)
	}
}

func run() error {
	tlsListen := flag.String("tls-listen", "127.0.0.1:0", "mTLS listener address (empty: none)")
	plainListen := flag.String("plain-listen", "127.0.0.1:0", "plaintext listener address (empty: none)")
	upstream := flag.String("upstream", "", "upstream base URL, e.g. http://127.0.0.1:8080")
	authzAddrs := flag.String("authz", "", "comma-separated ext_authz gRPC addresses (round-robin)")
	authzID := flag.String("authz-id", "", "SPIFFE ID the authz servers must present (default: any ID in the proxy's trust domain)")
	authzInsecure := flag.Bool("authz-insecure", false, "plaintext gRPC to loopback authz servers (dev only)")
	routesFile := flag.String("routes", "", "JSON file: array of {prefix, context_extensions, disabled}")
	routesJSON := flag.String("routes-json", "", "routes as inline JSON (instead of -routes)")
	timeout := flag.Duration("timeout", frontproxy.DefaultTimeout, "ext_authz timeout")
	statusOnError := flag.Int("status-on-error", frontproxy.DefaultStatusOnError, "HTTP status on a check error")
	includeCert := flag.Bool("include-peer-cert", true, "send the agent's certificate in source.certificate")
	addrFile := flag.String("addr-file", "", "write the bound addresses as JSON here once listening")
	svidTimeout := flag.Duration("svid-timeout", 60*time.Second, "how long to wait for the first SVID")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	up, err := url.Parse(*upstream)
	if err != nil {
		return fmt.Errorf("-upstream: %w", err)
	}
	routes, err := loadRoutes(*routesFile, *routesJSON)
	if err != nil {
		return err
	}
	var addrs []string
	for _, a := range strings.Split(*authzAddrs, ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, a)
		}
	}

	sctx, cancel := context.WithTimeout(ctx, *svidTimeout)
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
	td := svid.ID.TrustDomain()
	log.Info("got SVID", "spiffe_id", svid.ID.String())

	var creds credentials.TransportCredentials
	if *authzInsecure {
		for _, a := range addrs {
			host, _, err := net.SplitHostPort(a)
			if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
				return fmt.Errorf("-authz-insecure only with loopback addresses, got %q", a)
			}
		}
		creds = insecure.NewCredentials()
	} else {
		authorizer := tlsconfig.AuthorizeMemberOf(td)
		if *authzID != "" {
			id, err := spiffeid.FromString(*authzID)
			if err != nil {
				return fmt.Errorf("-authz-id: %w", err)
			}
			authorizer = tlsconfig.AuthorizeID(id)
		}
		creds = grpccredentials.MTLSClientCredentials(source, source, authorizer)
	}
	cc, err := frontproxy.DialAuthz(addrs, creds)
	if err != nil {
		return err
	}
	defer cc.Close()

	p, err := frontproxy.New(frontproxy.Config{
		Authz: authv3.NewAuthorizationClient(cc), Upstream: up, Routes: routes,
		Timeout: *timeout, StatusOnError: *statusOnError, IncludePeerCertificate: *includeCert,
		LocalPrincipal: svid.ID.String(), Logger: log,
	})
	if err != nil {
		return err
	}
	ln, err := frontproxy.Listen(p, *tlsListen, *plainListen, tlsconfig.MTLSServerConfig(source, source, tlsconfig.AuthorizeMemberOf(td)))
	if err != nil {
		return err
	}
	bound := Addrs{TLS: ln.TLSAddr(), Plain: ln.PlainAddr()}
	log.Info("frontproxy listening", "tls", bound.TLS, "plain", bound.Plain, "authz", addrs, "upstream", up.String())
	if *addrFile != "" {
		b, _ := json.Marshal(bound)
		if err := writeFileAtomic(*addrFile, b); err != nil {
			return err
		}
	}
	<-ctx.Done()
	sctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return ln.Close(sctx)
}

func loadRoutes(file, inline string) ([]frontproxy.Route, error) {
	if file != "" && inline != "" {
		return nil, errors.New("use -routes or -routes-json, not both")
	}
	var b []byte
	switch {
	case file != "":
		var err error
		if b, err = os.ReadFile(file); err != nil {
			return nil, fmt.Errorf("-routes: %w", err)
		}
	case inline != "":
		b = []byte(inline)
	default:
		return nil, nil
	}
	var routes []frontproxy.Route
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&routes); err != nil {
		return nil, fmt.Errorf("routes: %w", err)
	}
	return routes, nil
}

func writeFileAtomic(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return fmt.Errorf("addr file: %w", err)
	}
	_, werr := tmp.Write(b)
	cerr := tmp.Close()
	if werr != nil || cerr != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("addr file: %w", errors.Join(werr, cerr))
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("addr file: %w", err)
	}
	return nil
}
