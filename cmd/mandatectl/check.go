package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/mandate-dev/mandate/internal/envoyreq"
	"github.com/mandate-dev/mandate/internal/transport"
)

// connFlags are the flags every command that dials a Mandate server has.
type connFlags struct {
	addr, workloadAPI string
	serverIDs         listFlag
	plaintext         bool
	timeout           time.Duration
}

func (c *connFlags) register(fs *pflag.FlagSet, defAddr, defServer string) {
	fs.StringVar(&c.addr, "addr", defAddr, "server address")
	fs.StringVar(&c.workloadAPI, "workload-api", "", "SPIFFE Workload API socket for mTLS (default $SPIFFE_ENDPOINT_SOCKET)")
	fs.Var(&c.serverIDs, "server-id", "SPIFFE ID pattern the server must present (repeatable; default "+defServer+")")
	fs.BoolVar(&c.plaintext, "plaintext", false, "connect without TLS (loopback only)")
	fs.DurationVar(&c.timeout, "timeout", 5*time.Second, "timeout of the whole call")
}

func (c *connFlags) dial(ctx context.Context, defServer string) (*grpc.ClientConn, func(), error) {
	ids := []string(c.serverIDs)
	if len(ids) == 0 {
		ids = []string{defServer}
	}
	opt, src, err := transport.DialOption(ctx, c.addr, transport.Config{
		WorkloadAPI: c.workloadAPI, Allowed: ids, Insecure: c.plaintext,
	})
	if err != nil {
		if c.workloadAPI == "" && os.Getenv("SPIFFE_ENDPOINT_SOCKET") == "" {
			return nil, nil, fmt.Errorf("%w\nhint: mTLS needs a SPIFFE Workload API socket: set SPIFFE_ENDPOINT_SOCKET or --workload-api; "+
				"against a development server on loopback, use --plaintext", err)
		}
		return nil, nil, err
	}
	conn, err := grpc.NewClient(c.addr, opt)
	if err != nil {
		_ = src.Close()
		return nil, nil, fmt.Errorf("dial %s: %w", c.addr, err)
	}
	return conn, func() { _ = conn.Close(); _ = src.Close() }, nil
}

func checkCmd(fs *pflag.FlagSet) runFunc {
	var cf connFlags
	cf.register(fs, "127.0.0.1:9191", "spiffe://example.org/mandate/authz")
	var p envoyreq.Params
	var hdrs, exts listFlag
	var intent, task, mandate, mcpTool, mcpArgs string
	var asJSON bool
	fs.StringVar(&p.Principal, "principal", "", "caller's SPIFFE ID, as Envoy reports the peer certificate (empty: no mTLS)")
	fs.StringVar(&p.Destination, "destination", "", "destination principal")
	fs.StringVar(&p.Method, "method", "GET", "HTTP method")
	fs.StringVar(&p.Path, "path", "/", "request path (with query)")
	fs.StringVar(&p.Host, "host", "localhost", "request host (:authority)")
	fs.StringVar(&intent, "intent", "", "x-mandate-intent header")
	fs.StringVar(&task, "task", "", "x-mandate-task header")
	fs.StringVar(&mandate, "mandate", "", "x-mandate token")
	fs.Var(&hdrs, "header", "extra header 'name: value' (repeatable)")
	fs.Var(&exts, "context", "route context extension key=value (repeatable)")
	fs.StringVar(&p.Body, "body", "", "request body, sent as Envoy's with_request_body does (an MCP route reads its JSON-RPC request)")
	fs.StringVar(&mcpTool, "mcp-tool", "", "send an MCP tools/call of this tool: POST /mcp on a route labelled protocol=mcp (unless --method/--path/--context say otherwise)")
	fs.StringVar(&mcpArgs, "mcp-arguments", "{}", "with --mcp-tool: the tool's arguments, a JSON object")
	fs.BoolVar(&asJSON, "json", false, "print the CheckResponse as JSON (protojson, as grpcurl prints it)")
	return func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
		for _, h := range hdrs {
			k, v, ok := strings.Cut(h, ":")
			if !ok {
				return fmt.Errorf("--header %q: want 'name: value'", h)
			}
			p.Headers = append(p.Headers, [2]string{strings.TrimSpace(k), strings.TrimSpace(v)})
		}
		for name, v := range map[string]string{"x-mandate-intent": intent, "x-mandate-task": task, "x-mandate": mandate} {
			if v != "" {
				p.Headers = append(p.Headers, [2]string{name, v})
			}
		}
		if len(exts) > 0 {
			p.ContextExtensions = map[string]string{}
			for _, e := range exts {
				k, v, ok := strings.Cut(e, "=")
				if !ok {
					return fmt.Errorf("--context %q: want key=value", e)
				}
				p.ContextExtensions[k] = v
			}
		}
		if mcpTool != "" {
			if p.Body != "" {
				return errors.New("--body and --mcp-tool exclude each other")
			}
			if !json.Valid([]byte(mcpArgs)) || !strings.HasPrefix(strings.TrimSpace(mcpArgs), "{") {
				return fmt.Errorf("--mcp-arguments %q: want a JSON object", mcpArgs)
			}
			name, _ := json.Marshal(mcpTool)
			p.Body = `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":` + string(name) + `,"arguments":` + mcpArgs + `}}`
			if !fs.Changed("method") {
				p.Method = "POST"
			}
			if !fs.Changed("path") {
				p.Path = "/mcp"
			}
			if p.ContextExtensions == nil {
				p.ContextExtensions = map[string]string{"protocol": "mcp"}
			}
			p.Headers = append(p.Headers, [2]string{"content-type", "application/json"})
		}
		p.Time = time.Now()

		ctx, cancel := context.WithTimeout(ctx, cf.timeout)
		defer cancel()
		conn, closeConn, err := cf.dial(ctx, "spiffe://example.org/mandate/authz")
		if err != nil {
			return err
		}
		defer closeConn()
		start := time.Now()
		resp, err := authv3.NewAuthorizationClient(conn).Check(ctx, envoyreq.Build(p))
		if err != nil {
			// Envoy would answer status_on_error (403) here: fail closed.
			return fmt.Errorf("Check RPC failed (Envoy would deny with status_on_error): %w", rpcErr(err))
		}
		rtt := time.Since(start)
		if asJSON {
			// protojson, as grpcurl prints a CheckResponse.
			if err := printJSON(stdout, resp); err != nil {
				return err
			}
		}
		return printDecision(stdout, resp, rtt, asJSON)
	}
}

func printDecision(w io.Writer, resp *authv3.CheckResponse, rtt time.Duration, quiet bool) error {
	switch codes.Code(resp.GetStatus().GetCode()) {
	case codes.OK:
		if !quiet {
			fmt.Fprintf(w, "ALLOW (%s)\n", rtt.Round(time.Microsecond))
			for _, h := range resp.GetOkResponse().GetHeaders() {
				fmt.Fprintf(w, "  + %s: %s\n", h.GetHeader().GetKey(), h.GetHeader().GetValue())
			}
			for _, h := range resp.GetOkResponse().GetHeadersToRemove() {
				fmt.Fprintf(w, "  - %s\n", h)
			}
		}
		return nil
	case codes.PermissionDenied:
		d := resp.GetDeniedResponse()
		status := d.GetStatus().GetCode()
		if status == 0 {
			status = 403
		}
		if !quiet {
			fmt.Fprintf(w, "DENY %d (%s)\n  %s", status, rtt.Round(time.Microsecond), d.GetBody())
		}
		return exitError{code: exitDenied}
	default:
		return errors.New("unexpected CheckResponse status " + codes.Code(resp.GetStatus().GetCode()).String())
	}
}
