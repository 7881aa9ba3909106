package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"sigs.k8s.io/yaml"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// maxAuditRows is the most audit entries mandate-cp returns per call.
const maxAuditRows = 10000

func printJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(m)
	if err != nil {
		return err
	}
	fmt.Fprintln(w, string(b))
	return nil
}

func printYAML(w io.Writer, m proto.Message) error {
	b, err := protojson.Marshal(m)
	if err != nil {
		return err
	}
	y, err := yaml.JSONToYAML(b)
	if err != nil {
		return err
	}
	_, err = w.Write(y)
	return err
}

func getCmd(fs *pflag.FlagSet) runFunc {
	var af adminFlags
	af.register(fs)
	o := newOutputFlag(fs, "table", "yaml", "json")
	out := &o.value
	all := fs.Bool("all", false, "revocations: include expired records")
	return func(ctx context.Context, pos []string, stdout, stderr io.Writer) error {
		if err := o.check(); err != nil {
			return err
		}
		if len(pos) != 1 {
			return usagef("want policies or revocations")
		}
		ctx, conn, done, err := af.conn(ctx, nil)
		if err != nil {
			return err
		}
		defer done()
		c := mandatev1.NewAdminClient(conn)
		switch pos[0] {
		case "policies", "policy":
			resp, err := c.ListPolicies(ctx, &mandatev1.ListPoliciesRequest{})
			if err != nil {
				return rpcErr(err)
			}
			switch *out {
			case "json":
				return printJSON(stdout, resp)
			case "yaml":
				// The sources themselves, ready to apply again.
				for i, p := range resp.GetPolicies() {
					if i > 0 {
						fmt.Fprintln(stdout, "---")
					}
					fmt.Fprintf(stdout, "# policy/%s from %s\n%s", p.GetName(), p.GetSourceFile(), strings.TrimPrefix(string(p.GetSource()), "---\n"))
					if !strings.HasSuffix(string(p.GetSource()), "\n") {
						fmt.Fprintln(stdout)
					}
				}
				return nil
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSOURCE FILE\tCONTENT HASH")
			for _, p := range resp.GetPolicies() {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", p.GetName(), p.GetSourceFile(), trunc(p.GetVersion(), 19))
			}
			_ = tw.Flush()
			fmt.Fprintf(stdout, "policy version %s\n", resp.GetVersion())
			return nil
		case "revocations", "revocation":
			resp, err := listRevocations(ctx, c, *all)
			if err != nil {
				return rpcErr(err)
			}
			switch *out {
			case "json":
				return printJSON(stdout, resp)
			case "yaml":
				return printYAML(stdout, resp)
			}
			now := time.Now()
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tKIND\tVALUE\tINTENTS\tEXPIRES\tCREATED BY\tREASON")
			for _, r := range resp.GetRevocations() {
				intents := "-"
				if len(r.GetIntents()) > 0 {
					intents = strings.Join(r.GetIntents(), ",")
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.GetName(), r.GetKind(), r.GetValue(), intents,
					until(now, r.GetExpires()), r.GetCreatedBy(), trunc(r.GetReason(), 40))
			}
			_ = tw.Flush()
			fmt.Fprintf(stdout, "revocation version %s\n", resp.GetVersion())
			return nil
		}
		return usagef("unknown object %q (policies or revocations)", pos[0])
	}
}

func until(now time.Time, ts *timestamppb.Timestamp) string {
	d := ts.AsTime().Sub(now)
	if d <= 0 {
		return "expired"
	}
	return "in " + d.Round(time.Second).String()
}

func trunc(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

var typeColumns = []struct{ url, name string }{
	{mandatev1.PolicyTypeURL, "POLICY"},
	{mandatev1.RevocationTypeURL, "REVOCATION"},
	{mandatev1.ApprovalTypeURL, "APPROVAL"},
	{mandatev1.VerificationKeyTypeURL, "KEY"},
}

func statusCmd(fs *pflag.FlagSet) runFunc {
	var af adminFlags
	af.register(fs)
	o := newOutputFlag(fs, "table", "yaml", "json")
	return func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
		if err := o.check(); err != nil {
			return err
		}
		if len(args) != 0 {
			return usagef("unexpected arguments %q", args)
		}
		ctx, conn, done, err := af.conn(ctx, nil)
		if err != nil {
			return err
		}
		defer done()
		c := mandatev1.NewAdminClient(conn)
		resp, err := c.Status(ctx, &mandatev1.StatusRequest{})
		if err != nil {
			return rpcErr(err)
		}
		if o.value != "table" {
			return printProto(stdout, o.value, resp)
		}
		printStatus(stdout, stderr, resp, time.Now())
		return nil
	}
}

var envoyColumns = []struct{ url, name string }{
	{envoyListenerTypeURL, "LISTENER"},
	{envoyClusterTypeURL, "CLUSTER"},
}

// Type URLs of the Envoy resources mandate-cp serves (LDS, CDS).
const (
	envoyListenerTypeURL = "type.googleapis.com/envoy.config.listener.v3.Listener"
	envoyClusterTypeURL  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
)

// printStatus prints the replicas table and, when mandate-cp serves
// Envoys (any connected, or listeners or clusters set), the Envoys table.
// NACKs are repeated in full on stderr.
func printStatus(stdout, stderr io.Writer, resp *mandatev1.StatusResponse, now time.Time) {
	fmt.Fprint(stdout, "control plane versions:")
	for _, t := range typeColumns {
		fmt.Fprintf(stdout, " %s=%s", strings.ToLower(t.name), resp.GetVersions()[t.url])
	}
	fmt.Fprintln(stdout)
	var nacks []string
	printNodes(stdout, resp.GetReplicas(), typeColumns, now, &nacks, "LAG\tNACK")
	if len(resp.GetReplicas()) == 0 {
		fmt.Fprintln(stdout, "no replica has connected")
	}
	if len(resp.GetEnvoys()) > 0 || envoyConfigured(resp.GetEnvoyVersions()) {
		fmt.Fprintln(stdout)
		fmt.Fprint(stdout, "envoy versions:")
		for _, t := range envoyColumns {
			fmt.Fprintf(stdout, " %s=%s", strings.ToLower(t.name), resp.GetEnvoyVersions()[t.url])
		}
		fmt.Fprintln(stdout)
		printNodes(stdout, resp.GetEnvoys(), envoyColumns, now, &nacks, "NACK\tLAG")
		if len(resp.GetEnvoys()) == 0 {
			fmt.Fprintln(stdout, "no envoy has connected")
		}
	}
	for _, n := range nacks {
		fmt.Fprintln(stderr, "NACK:", n)
	}
}

// envoyConfigured: a listener or cluster version was ever set.
func envoyConfigured(vs map[string]string) bool {
	for _, v := range vs {
		if v != "" && v != "0" {
			return true
		}
	}
	return false
}

// printNodes prints one table: NODE, INSTANCE (when mandate-cp runs as a
// fleet of named instances), CONNECTED, the acked version of each column
// type, then tail ("LAG\tNACK" or "NACK\tLAG"), appending every NACK's
// full text to nacks.
func printNodes(w io.Writer, nodes []*mandatev1.ReplicaStatus, cols []struct{ url, name string }, now time.Time, nacks *[]string, tail string) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fleet := slices.ContainsFunc(nodes, func(r *mandatev1.ReplicaStatus) bool { return r.GetInstance() != "" })
	fmt.Fprint(tw, "NODE")
	if fleet {
		fmt.Fprint(tw, "\tINSTANCE")
	}
	fmt.Fprint(tw, "\tCONNECTED")
	for _, t := range cols {
		fmt.Fprint(tw, "\t"+t.name)
	}
	fmt.Fprintln(tw, "\t"+tail)
	lagFirst := strings.HasPrefix(tail, "LAG")
	for _, r := range nodes {
		conn := "yes"
		if !r.GetConnected() {
			conn = "no"
			if r.GetLastSeen() != nil {
				conn = "no (" + now.Sub(r.GetLastSeen().AsTime()).Round(time.Second).String() + " ago)"
			}
		}
		fmt.Fprint(tw, r.GetNodeId())
		if fleet {
			fmt.Fprint(tw, "\t"+r.GetInstance())
		}
		fmt.Fprint(tw, "\t"+conn)
		byType := map[string]*mandatev1.ReplicaTypeStatus{}
		for _, t := range r.GetTypes() {
			byType[t.GetTypeUrl()] = t
		}
		var lag time.Duration
		nack := "-"
		for _, col := range cols {
			t := byType[col.url]
			cell := "-"
			if t != nil {
				if t.GetAckedVersion() != "" {
					cell = t.GetAckedVersion()
				}
				if t.GetNackedVersion() != "" {
					cell += " (NACK " + t.GetNackedVersion() + ")"
					nack = strings.ToLower(col.name) + " " + t.GetNackedVersion() + ": " + trunc(t.GetNackError(), 60)
					*nacks = append(*nacks, fmt.Sprintf("%s rejected %s version %s: %s", r.GetNodeId(), strings.ToLower(col.name), t.GetNackedVersion(), t.GetNackError()))
				}
				lag = max(lag, t.GetLag().AsDuration())
			}
			fmt.Fprint(tw, "\t"+cell)
		}
		if lagFirst {
			fmt.Fprintf(tw, "\t%s\t%s\n", fmtDur(lag), nack)
		} else {
			fmt.Fprintf(tw, "\t%s\t%s\n", nack, fmtDur(lag))
		}
	}
	_ = tw.Flush()
}

func auditCmd(fs *pflag.FlagSet) runFunc {
	var af adminFlags
	af.register(fs)
	since := fs.String("since", "", "only entries newer than this: a duration (1h) or an RFC 3339 time")
	limit := fs.Int("limit", 1000, "show the newest this many entries")
	o := newOutputFlag(fs, "table", "yaml", "json")
	return func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
		if err := o.check(); err != nil {
			return err
		}
		if len(args) != 0 {
			return usagef("unexpected arguments %q", args)
		}
		if *limit <= 0 || *limit > maxAuditRows {
			return usagef("--limit %d: want 1 to %d", *limit, maxAuditRows)
		}
		req := &mandatev1.AuditLogRequest{Limit: int32(*limit), Newest: true}
		if *since != "" {
			if d, err := time.ParseDuration(*since); err == nil {
				req.Since = timestamppb.New(time.Now().Add(-d))
			} else if t, err := time.Parse(time.RFC3339, *since); err == nil {
				req.Since = timestamppb.New(t)
			} else {
				return fmt.Errorf("--since %q: want a duration or an RFC 3339 time", *since)
			}
		}
		ctx, conn, done, err := af.conn(ctx, nil)
		if err != nil {
			return err
		}
		defer done()
		c := mandatev1.NewAdminClient(conn)
		resp, err := c.AuditLog(ctx, req)
		if err != nil {
			return rpcErr(err)
		}
		if o.value != "table" {
			return printProto(stdout, o.value, resp)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TIME\tACTOR\tACTION\tOBJECT\tDETAIL")
		for _, e := range resp.GetEntries() {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.GetTime().AsTime().Local().Format(time.RFC3339), e.GetActor(),
				e.GetAction(), e.GetObject(), trunc(e.GetDetail(), 80))
		}
		return tw.Flush()
	}
}

// listRevocations reads every page of ListRevocations (the control plane
// may hold millions of records; one response carries at most a page).
func listRevocations(ctx context.Context, c mandatev1.AdminClient, all bool) (*mandatev1.ListRevocationsResponse, error) {
	out := &mandatev1.ListRevocationsResponse{}
	token := ""
	for {
		resp, err := c.ListRevocations(ctx, &mandatev1.ListRevocationsRequest{IncludeExpired: all, PageToken: token})
		if err != nil {
			return nil, err
		}
		out.Revocations = append(out.Revocations, resp.GetRevocations()...)
		if out.Version == "" {
			out.Version = resp.GetVersion()
		}
		if token = resp.GetNextPageToken(); token == "" {
			return out, nil
		}
	}
}
