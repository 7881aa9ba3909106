package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// operatorCommands are the control-plane operator commands (apply, revoke,
// status, ...).
func operatorCommands() []command {
	return []command{
		{"apply -f FILE|DIR", "store policy files in mandate-cp", func(fs *pflag.FlagSet) runFunc { return applyOrDiff("apply", fs) }},
		{"diff -f FILE|DIR", "show what apply would change, as a unified diff (exit 1 when it would)", func(fs *pflag.FlagSet) runFunc { return applyOrDiff("diff", fs) }},
		{"delete NAME", "delete a stored policy", deleteCmd},
		{"get policies|revocations", "list stored objects", getCmd},
		{"revoke --subject|--task|--mandate V ... --for D", "revoke subjects, tasks or mandates", func(fs *pflag.FlagSet) runFunc { return revokeOrDowngrade("revoke", fs) }},
		{"downgrade --subject|--task V ... --intents a,b --for D", "limit subjects or tasks to intents", func(fs *pflag.FlagSet) runFunc { return revokeOrDowngrade("downgrade", fs) }},
		{"status", "replicas connected to mandate-cp, the versions each ACKed or NACKed, their lag", statusCmd},
		{"audit", "the control plane's audit trail", auditCmd},
	}
}

const (
	defCPAddr = "127.0.0.1:18001"
	defCPID   = "spiffe://example.org/mandate/cp"
)

// adminFlags are connFlags plus the local unix socket.
type adminFlags struct {
	connFlags
	socket string
}

func (a *adminFlags) register(fs *pflag.FlagSet) {
	a.connFlags.register(fs, defCPAddr, defCPID)
	fs.StringVar(&a.socket, "socket", "", "use mandate-cp's local admin unix socket instead of --addr")
}

// conn dials mandate-cp (the unix socket with --socket, else --addr over
// mTLS) and returns the call context, bounded by --timeout, or longer
// with --wait (w may be nil). done closes the connection and the context.
func (a *adminFlags) conn(ctx context.Context, w *waitFlags) (context.Context, *grpc.ClientConn, func(), error) {
	ctx, cancel := callCtx(ctx, a, w)
	if a.socket != "" {
		abs, err := filepath.Abs(a.socket)
		var conn *grpc.ClientConn
		if err == nil {
			conn, err = grpc.NewClient("unix://"+abs, grpc.WithTransportCredentials(insecure.NewCredentials()))
		}
		if err != nil {
			cancel()
			return nil, nil, nil, fmt.Errorf("dial %s: %w", a.socket, err)
		}
		return ctx, conn, func() { _ = conn.Close(); cancel() }, nil
	}
	conn, closeConn, err := a.dial(ctx, defCPID)
	if err != nil {
		cancel()
		return nil, nil, nil, err
	}
	return ctx, conn, func() { closeConn(); cancel() }, nil
}

// waitFlags are --wait, --wait-timeout and --allow-none.
type waitFlags struct {
	wait, allowNone bool
	timeout         time.Duration
}

func (w *waitFlags) register(fs *pflag.FlagSet) {
	fs.BoolVar(&w.wait, "wait", false, "return once every connected replica has ACKed the change")
	fs.DurationVar(&w.timeout, "wait-timeout", 30*time.Second, "how long --wait waits")
	fs.BoolVar(&w.allowNone, "allow-none", false, "with --wait: succeed when no replica is connected (otherwise that fails: nothing enforces the change)")
}

// callCtx bounds the whole command: --timeout, stretched by --wait-timeout.
func callCtx(ctx context.Context, a *adminFlags, w *waitFlags) (context.Context, context.CancelFunc) {
	d := a.timeout
	if w != nil && w.wait && w.timeout+a.timeout > d {
		d = w.timeout + a.timeout
	}
	return context.WithTimeout(ctx, d)
}

// rpcErr turns a gRPC error into "code: the server's message", without
// the layers of prefixes grpc-go wraps a dial failure in.
func rpcErr(err error) error {
	s, ok := status.FromError(err)
	if !ok {
		return err
	}
	msg := s.Message()
	for _, p := range []string{`connection error: desc = "`, "transport: Error while dialing: ", "transport: "} {
		if rest, cut := strings.CutPrefix(msg, p); cut {
			msg = strings.TrimSuffix(rest, `"`)
		}
	}
	return fmt.Errorf("%s: %s", strings.ToLower(s.Code().String()), msg)
}

// waitAcked waits for typeURL@version and prints how long it took. what
// names the change ("revocation r-abc").
func waitAcked(ctx context.Context, c mandatev1.AdminClient, w *waitFlags, typeURL, version, what string, stdout, stderr io.Writer) error {
	fmt.Fprintf(stderr, "waiting for every connected replica to ACK %s version %s ...\n", short(typeURL), version)
	start := time.Now()
	wctx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() { defer close(watched); watchAcks(wctx, c, typeURL, version, stderr) }()
	resp, err := c.WaitAcked(ctx, &mandatev1.WaitAckedRequest{TypeUrl: typeURL, Version: version, Timeout: durationpb.New(w.timeout)})
	stopWatch()
	<-watched
	if err != nil {
		return fmt.Errorf("%s not confirmed: %w", what, rpcErr(err))
	}
	total := time.Since(start)
	if resp.GetReplicas() == 0 {
		if !w.allowNone {
			return fmt.Errorf("%s not confirmed: no replica is connected to the control plane, nothing enforces it yet (--allow-none accepts that)", what)
		}
		fmt.Fprintf(stderr, "warning: no replica is connected to the control plane: nothing enforces %s yet (replicas that connect get it first)\n", what)
		return nil
	}
	connected := int(resp.GetReplicas())
	if st, err := c.Status(ctx, &mandatev1.StatusRequest{}); err == nil {
		_, n := countReplicas(st.GetReplicas(), typeURL, 0)
		connected = max(n, connected)
	}
	if int(resp.GetReplicas()) < connected {
		// A replica connected while we waited and has not ACKed yet.
		return fmt.Errorf("%s not confirmed: enforced by %d of %d connected replicas", what, resp.GetReplicas(), connected)
	}
	fmt.Fprintf(stdout, "%s enforced by %d/%d replicas in %s\n", what, resp.GetReplicas(), connected, fmtDur(total))
	return nil
}

func fmtDur(d time.Duration) string {
	switch {
	case d == 0:
		return "0"
	case d < time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
	return d.Round(time.Millisecond).String()
}

func short(typeURL string) string {
	if i := strings.LastIndexByte(typeURL, '.'); i >= 0 {
		return strings.ToLower(typeURL[i+1:])
	}
	return typeURL
}

func applyOrDiff(name string, fs *pflag.FlagSet) runFunc {
	var af adminFlags
	af.register(fs)
	var wf waitFlags
	var files listFlag
	fs.VarP(&files, "filename", "f", "policy file or directory (repeatable)")
	prune := fs.Bool("prune", false, "also delete stored policies that the given files do not hold")
	if name == "apply" {
		wf.register(fs)
	}
	return func(ctx context.Context, pos []string, stdout, stderr io.Writer) error {
		if len(files) == 0 || len(pos) > 0 {
			return usagef("want -f FILE|DIR [-f ...] and no arguments")
		}
		ps, err := readPolicyFiles(files)
		if err != nil {
			return err
		}
		prog := newProgress(stderr, len(ps))
		prog.stepf("read and validated %d policies", len(ps))
		ctx, conn, done, err := af.conn(ctx, &wf)
		if err != nil {
			return err
		}
		defer done()
		c := mandatev1.NewAdminClient(conn)
		prog.stepf("sending %d policies to mandate-cp", len(ps))
		resp, err := c.ApplyPolicies(ctx, &mandatev1.ApplyPoliciesRequest{Policies: ps, DryRun: name == "diff", Prune: *prune})
		if err != nil {
			return rpcErr(err)
		}
		prog.stepf("answered: %d changes at policy version %s", len(resp.GetChanges()), resp.GetVersion())
		changed := false
		for _, ch := range resp.GetChanges() {
			if ch.GetChange() != "unchanged" {
				changed = true
			}
			if name == "diff" {
				if ch.GetChange() == "unchanged" {
					continue
				}
				var local []byte
				for _, p := range ps {
					if p.GetName() == ch.GetName() {
						local = p.GetSource()
					}
				}
				printUnified(stdout, ch.GetName(), ch.GetChange(), ch.GetDiff(), local)
				continue
			}
			fmt.Fprintf(stdout, "policy/%s %s\n", ch.GetName(), ch.GetChange())
		}
		if name == "diff" {
			if changed {
				return exitError{code: 1}
			}
			fmt.Fprintln(stdout, "no changes")
			return nil
		}
		if !changed {
			fmt.Fprintf(stdout, "no changes (policy version %s)\n", resp.GetVersion())
		} else {
			fmt.Fprintf(stdout, "policy version %s\n", resp.GetVersion())
		}
		if wf.wait {
			return waitAcked(ctx, c, &wf, mandatev1.PolicyTypeURL, resp.GetVersion(), "policy version "+resp.GetVersion(), stdout, stderr)
		}
		return nil
	}
}

func deleteCmd(fs *pflag.FlagSet) runFunc {
	var af adminFlags
	af.register(fs)
	var wf waitFlags
	wf.register(fs)
	return func(ctx context.Context, pos []string, stdout, stderr io.Writer) error {
		if len(pos) != 1 {
			return usagef("want one policy NAME")
		}
		name := strings.TrimPrefix(pos[0], "policy/")
		ctx, conn, done, err := af.conn(ctx, &wf)
		if err != nil {
			return err
		}
		defer done()
		c := mandatev1.NewAdminClient(conn)
		resp, err := c.DeletePolicy(ctx, &mandatev1.DeletePolicyRequest{Name: name})
		if err != nil {
			return rpcErr(err)
		}
		fmt.Fprintf(stdout, "policy/%s deleted (policy version %s)\n", name, resp.GetVersion())
		if wf.wait {
			return waitAcked(ctx, c, &wf, mandatev1.PolicyTypeURL, resp.GetVersion(), "deletion of policy/"+name, stdout, stderr)
		}
		return nil
	}
}
