package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/mandate-dev/mandate/cp/issuer/rpcutil"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// mandateCommands are the mandate lifecycle commands (issue, delegate,
// approve, ...).
func mandateCommands() []command {
	return []command{
		{"issue --subject ID --task T --intent I --paths P", "mint a mandate (token on stdout)", issueCmd},
		{"delegate --parent TOKEN --to ID --paths P", "delegate your mandate (token on stdout)", delegateCmd},
		{"complete TASK", "end a task, revoking every mandate of it and its delegations", completeCmd},
		{"approvals", "list step-up approval requests", approvalsCmd},
		{"approve ID", "approve a step-up request", approveCmd},
		{"deny ID", "deny a step-up request (withdraws an approval)", denyCmd},
		{"inspect TOKEN|-", "decode a mandate, show chain, scope and times", inspectCmd},
	}
}

// mandateFlags are the admin connection flags plus --dev-as.
type mandateFlags struct {
	adminFlags
	devAs string
}

func (m *mandateFlags) register(fs *pflag.FlagSet) {
	m.adminFlags.register(fs)
	fs.StringVar(&m.devAs, "dev-as", "", "with --plaintext against a dev mandate-cp: act as this SPIFFE ID (no mTLS identity to take it from)")
}

// conn is adminFlags.conn, refusing --dev-as over mTLS and sending it
// as the caller otherwise.
func (m *mandateFlags) conn(ctx context.Context, w *waitFlags) (context.Context, *grpc.ClientConn, func(), error) {
	if m.devAs != "" && !m.plaintext && m.socket == "" {
		return nil, nil, nil, errors.New("--dev-as needs --plaintext (with mTLS the identity is your SVID)")
	}
	ctx, conn, done, err := m.adminFlags.conn(ctx, w)
	if err != nil {
		return nil, nil, nil, err
	}
	if m.devAs != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, rpcutil.DevCallerHeader, m.devAs)
	}
	return ctx, conn, done, nil
}

// scopeFlags are the scope of a mandate.
type scopeFlags struct {
	destinations, hosts, methods, paths, grpc listFlag
	mcpMethods, mcpTools, mcpResources        listFlag
}

func (s *scopeFlags) register(fs *pflag.FlagSet) {
	fs.Var(&s.destinations, "destinations", "destination SPIFFE ID patterns (comma-separated or repeated; empty: any)")
	fs.Var(&s.hosts, "hosts", "host names, exact or *.suffix (empty: any)")
	fs.Var(&s.methods, "methods", "HTTP methods (empty: any)")
	fs.Var(&s.paths, "paths", "URL path patterns, e.g. /tickets/**")
	fs.Var(&s.grpc, "grpc", "gRPC methods pkg.Service/Method or pkg.Service/*")
	fs.Var(&s.mcpMethods, "mcp-methods", "MCP JSON-RPC methods, e.g. initialize,tools/list,tools/call (empty: any)")
	fs.Var(&s.mcpTools, "mcp-tools", "MCP tool-name globs a tools/call must match, e.g. github.list_*")
	fs.Var(&s.mcpResources, "mcp-resources", "MCP resource URI globs a resources/read must match")
}

func (s *scopeFlags) proto() *mandatev1.MandateScope {
	split := func(l listFlag) []string {
		var out []string
		for _, v := range l {
			for _, p := range strings.Split(v, ",") {
				if p = strings.TrimSpace(p); p != "" {
					out = append(out, p)
				}
			}
		}
		return out
	}
	return &mandatev1.MandateScope{Destinations: split(s.destinations), Hosts: split(s.hosts), Methods: split(s.methods),
		Paths: split(s.paths), Grpc: split(s.grpc),
		McpMethods: split(s.mcpMethods), McpTools: split(s.mcpTools), McpResources: split(s.mcpResources)}
}

func issueCmd(fs *pflag.FlagSet) runFunc {
	var mf mandateFlags
	mf.register(fs)
	var sf scopeFlags
	sf.register(fs)
	var subject, task, intent string
	var ttl time.Duration
	fs.StringVar(&subject, "subject", "", "SPIFFE ID of the agent the mandate is for (required)")
	fs.StringVar(&task, "task", "", "task id (required)")
	fs.StringVar(&intent, "intent", "", "declared intent (required)")
	fs.DurationVar(&ttl, "ttl", 0, "lifetime (default and cap: the issuance policy's maxTTL and --mandate-max-ttl)")
	return func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
		if subject == "" || task == "" || intent == "" || len(args) != 0 {
			return usagef("--subject, --task and --intent are required; no arguments")
		}
		req := &mandatev1.IssueMandateRequest{Subject: subject, Task: task, Intent: intent, Scope: sf.proto()}
		if ttl != 0 {
			req.Ttl = durationpb.New(ttl)
		}
		ctx, conn, done, err := mf.conn(ctx, nil)
		if err != nil {
			return err
		}
		defer done()
		resp, err := mandatev1.NewMandatesClient(conn).IssueMandate(ctx, req)
		if err != nil {
			return rpcErr(err)
		}
		fmt.Fprintln(stdout, resp.GetToken())
		fmt.Fprintf(stderr, "mandate %s for %s, task %s, intent %s, expires %s (key %s)\n", resp.GetId(), subject, task, intent,
			resp.GetExpires().AsTime().Local().Format(time.RFC3339), resp.GetKeyId())
		return nil
	}
}

func delegateCmd(fs *pflag.FlagSet) runFunc {
	var mf mandateFlags
	mf.register(fs)
	var sf scopeFlags
	sf.register(fs)
	var parent, to string
	var ttl time.Duration
	fs.StringVar(&parent, "parent", "", "your mandate (the token; '-' reads it from stdin)")
	fs.StringVar(&to, "to", "", "SPIFFE ID of the agent to delegate to (required)")
	fs.DurationVar(&ttl, "ttl", 0, "lifetime (never past the parent's expiry)")
	return func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
		if parent == "" || to == "" || len(args) != 0 {
			return usagef("--parent and --to are required; no arguments")
		}
		if parent == "-" {
			b, err := io.ReadAll(io.LimitReader(os.Stdin, 64<<10))
			if err != nil {
				return err
			}
			parent = strings.TrimSpace(string(b))
		}
		req := &mandatev1.DelegateMandateRequest{ParentToken: parent, To: to, Scope: sf.proto()}
		if ttl != 0 {
			req.Ttl = durationpb.New(ttl)
		}
		ctx, conn, done, err := mf.conn(ctx, nil)
		if err != nil {
			return err
		}
		defer done()
		resp, err := mandatev1.NewMandatesClient(conn).Delegate(ctx, req)
		if err != nil {
			return rpcErr(err)
		}
		fmt.Fprintln(stdout, resp.GetToken())
		fmt.Fprintf(stderr, "mandate %s delegated to %s at depth %d, expires %s\n", resp.GetId(), to, resp.GetDepth(),
			resp.GetExpires().AsTime().Local().Format(time.RFC3339))
		return nil
	}
}

func completeCmd(fs *pflag.FlagSet) runFunc {
	var mf mandateFlags
	mf.register(fs)
	var wf waitFlags
	wf.register(fs)
	var reason string
	fs.StringVar(&reason, "reason", "", "why, for the audit trail")
	return func(ctx context.Context, pos []string, stdout, stderr io.Writer) error {
		if len(pos) != 1 {
			return usagef("want one TASK")
		}
		ctx, conn, done, err := mf.conn(ctx, &wf)
		if err != nil {
			return err
		}
		defer done()
		resp, err := mandatev1.NewMandatesClient(conn).CompleteTask(ctx,
			&mandatev1.CompleteTaskRequest{Task: pos[0], Reason: reason})
		if err != nil {
			return rpcErr(err)
		}
		fmt.Fprintf(stdout, "task %s completed: revocation %s (version %s) until %s\n", pos[0], resp.GetRevocationId(), resp.GetVersion(),
			resp.GetExpires().AsTime().Local().Format(time.RFC3339))
		if wf.wait {
			return waitAcked(ctx, mandatev1.NewAdminClient(conn), &wf, mandatev1.RevocationTypeURL, resp.GetVersion(), "revocation "+resp.GetRevocationId(), stdout, stderr)
		}
		return nil
	}
}

func approvalsCmd(fs *pflag.FlagSet) runFunc {
	var mf mandateFlags
	mf.register(fs)
	var all bool
	fs.BoolVar(&all, "all", false, "include approved and denied requests")
	o := newOutputFlag(fs, "table", "yaml", "json")
	return func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
		if err := o.check(); err != nil {
			return err
		}
		if len(args) != 0 {
			return usagef("unexpected arguments %q", args)
		}
		ctx, conn, done, err := mf.conn(ctx, nil)
		if err != nil {
			return err
		}
		defer done()
		resp, err := mandatev1.NewApprovalsClient(conn).List(ctx, &mandatev1.ListApprovalRequestsRequest{All: all})
		if err != nil {
			return rpcErr(err)
		}
		if o.value != "table" {
			return printProto(stdout, o.value, resp)
		}
		if len(resp.GetRequests()) == 0 {
			fmt.Fprintln(stderr, "no approval requests")
			return nil
		}
		now := time.Now()
		fmt.Fprintf(stdout, "%-23s  %-8s  %-5s  %-40s  %-16s  %-30s  %-20s  %s\n", "ID", "STATE", "COUNT", "SUBJECT", "TASK", "ACTION", "POLICY/RULE", "EXPIRES")
		for _, r := range resp.GetRequests() {
			action := r.GetMethod() + " " + r.GetPath()
			if r.GetGrpc() != "" {
				action = "grpc " + r.GetGrpc()
			}
			if r.GetMcp() != "" {
				action = "mcp " + r.GetMcp()
			}
			state := r.GetState()
			if r.GetDecidedBy() != "" {
				state += " by " + r.GetDecidedBy()
			}
			fmt.Fprintf(stdout, "%-23s  %-8s  %-5d  %-40s  %-16s  %-30s  %-20s  %s\n", r.GetId(), state, r.GetCount(), trunc(r.GetSubject(), 40),
				trunc(r.GetTask(), 16), trunc(action, 30), trunc(r.GetPolicy()+"/"+r.GetRule(), 20), until(now, r.GetExpires()))
			// The argument values an MCP approval is bound to, in full.
			names := make([]string, 0, len(r.GetMcpArguments()))
			for k := range r.GetMcpArguments() {
				names = append(names, k)
			}
			slices.Sort(names)
			for _, k := range names {
				fmt.Fprintf(stdout, "  %s = %s\n", k, r.GetMcpArguments()[k])
			}
			// The header values the approval is bound to, quoted (they are
			// client-set; "" is an absent header).
			for _, k := range slices.Sorted(maps.Keys(r.GetHeaders())) {
				fmt.Fprintf(stdout, "  header %s = %q\n", k, r.GetHeaders()[k])
			}
			if r.GetUses() > 0 {
				fmt.Fprintf(stdout, "  uses: %d\n", r.GetUses())
			}
		}
		return nil
	}
}

func approveCmd(fs *pflag.FlagSet) runFunc {
	var mf mandateFlags
	mf.register(fs)
	var wf waitFlags
	wf.register(fs)
	var window time.Duration
	fs.DurationVar(&window, "for", 0, "approval window (default: mandate-cp's --approval-window)")
	var uses uint32
	fs.Uint32Var(&uses, "uses", 1, "how many requests the approval allows, counted across all replicas")
	return func(ctx context.Context, pos []string, stdout, stderr io.Writer) error {
		if len(pos) != 1 {
			return usagef("want one approval request ID")
		}
		if uses == 0 {
			return usagef("--uses must be at least 1")
		}
		req := &mandatev1.ApproveStepUpRequest{Id: pos[0], Uses: uses}
		if window != 0 {
			req.Window = durationpb.New(window)
		}
		ctx, conn, done, err := mf.conn(ctx, &wf)
		if err != nil {
			return err
		}
		defer done()
		resp, err := mandatev1.NewApprovalsClient(conn).Approve(ctx, req)
		if err != nil {
			return rpcErr(err)
		}
		r := resp.GetRequest()
		fmt.Fprintf(stdout, "approved %s for %s (task %s, %s %s%s) until %s, %d use(s)\n", r.GetId(), r.GetSubject(), r.GetTask(), r.GetMethod(), r.GetPath(),
			r.GetGrpc(), r.GetExpires().AsTime().Local().Format(time.RFC3339), r.GetUses())
		if wf.wait {
			return waitAcked(ctx, mandatev1.NewAdminClient(conn), &wf, mandatev1.ApprovalTypeURL, resp.GetVersion(), "approval "+r.GetId(), stdout, stderr)
		}
		return nil
	}
}

func denyCmd(fs *pflag.FlagSet) runFunc {
	var mf mandateFlags
	mf.register(fs)
	var wf waitFlags
	wf.register(fs)
	var reason string
	fs.StringVar(&reason, "reason", "", "why, for the audit trail")
	return func(ctx context.Context, pos []string, stdout, stderr io.Writer) error {
		if len(pos) != 1 {
			return usagef("want one approval request ID")
		}
		ctx, conn, done, err := mf.conn(ctx, &wf)
		if err != nil {
			return err
		}
		defer done()
		resp, err := mandatev1.NewApprovalsClient(conn).Deny(ctx, &mandatev1.DenyStepUpRequest{Id: pos[0], Reason: reason})
		if err != nil {
			return rpcErr(err)
		}
		fmt.Fprintf(stdout, "denied %s\n", resp.GetRequest().GetId())
		if resp.GetVersion() != "" {
			fmt.Fprintf(stdout, "approval withdrawn (version %s)\n", resp.GetVersion())
			if wf.wait {
				return waitAcked(ctx, mandatev1.NewAdminClient(conn), &wf, mandatev1.ApprovalTypeURL, resp.GetVersion(), "withdrawal of "+pos[0], stdout, stderr)
			}
		}
		return nil
	}
}
