package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/durationpb"
	"sigs.k8s.io/yaml"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// Limits of revoke -f.
const (
	maxRevokeFile  = 16 << 20
	maxRevokeBatch = 10000 // the control plane's batch limit
)

type revokeOpts struct {
	subjects, tasks, mandates, files, intents listFlag
	kind, reason                              string
	ttl                                       time.Duration
}

// revokeOrDowngrade sends one Revoke for a single value, else one
// RevokeBatch: all values are stored together under one revocation
// version, or none is.
func revokeOrDowngrade(name string, fs *pflag.FlagSet) runFunc {
	var af adminFlags
	af.register(fs)
	var wf waitFlags
	wf.register(fs)
	var o revokeOpts
	fs.Var(&o.subjects, "subject", "SPIFFE ID or pattern (spiffe://td/team/** ...) (repeatable)")
	fs.Var(&o.tasks, "task", "task id (repeatable)")
	if name == "revoke" {
		fs.Var(&o.mandates, "mandate", "mandate id: its whole delegation subtree (repeatable)")
	} else {
		fs.Var(&o.intents, "intents", "intents still allowed, comma-separated (repeatable)")
	}
	fs.VarP(&o.files, "filename", "f", "file of values, one per line (# comments) or a YAML list; - for stdin (repeatable)")
	fs.StringVar(&o.kind, "kind", "subject", "kind of the values read with -f: subject, task or mandate")
	fs.DurationVar(&o.ttl, "for", 0, "how long the records apply, e.g. 1h (required: records expire, they are never deleted)")
	fs.StringVar(&o.reason, "reason", "", "why (kept in the records and the audit trail, never sent to clients)")
	return func(ctx context.Context, pos []string, stdout, stderr io.Writer) error {
		var intents []string
		for _, i := range o.intents {
			for _, p := range strings.Split(i, ",") {
				if p = strings.TrimSpace(p); p != "" {
					intents = append(intents, p)
				}
			}
		}
		kinds := "--subject, --task"
		if name == "revoke" {
			kinds += ", --mandate"
		}
		switch {
		case len(pos) > 0:
			return usagef("unexpected arguments %q", pos)
		case o.kind != "subject" && o.kind != "task" && (o.kind != "mandate" || name != "revoke"):
			return usagef("--kind %q: want subject, task%s", o.kind, map[bool]string{true: " or mandate"}[name == "revoke"])
		case o.ttl <= 0:
			return usagef("--for DURATION is required (for example --for 1h)")
		case name == "downgrade" && len(intents) == 0:
			return usagef("--intents is required")
		}
		type target struct{ kind, value string }
		var targets []target
		for _, g := range []struct {
			kind   string
			values []string
		}{{"subject", o.subjects}, {"task", o.tasks}, {"mandate", o.mandates}} {
			for _, v := range g.values {
				targets = append(targets, target{g.kind, v})
			}
		}
		for _, f := range o.files {
			vs, err := readRevokeFile(f, os.Stdin)
			if err != nil {
				return err
			}
			for _, v := range vs {
				targets = append(targets, target{o.kind, v})
			}
		}
		switch {
		case len(targets) == 0:
			return usagef("at least one of %s or -f FILE is required", kinds)
		case len(targets) > maxRevokeBatch:
			return fmt.Errorf("%d values exceed the limit of %d per call: split them", len(targets), maxRevokeBatch)
		}
		seen := map[target]bool{}
		reqs := make([]*mandatev1.RevokeRequest, 0, len(targets))
		for _, t := range targets {
			if t.value == "" {
				return fmt.Errorf("empty %s value", t.kind)
			}
			if seen[t] {
				return fmt.Errorf("%s %s given twice", t.kind, t.value)
			}
			seen[t] = true
			reqs = append(reqs, &mandatev1.RevokeRequest{Kind: t.kind, Value: t.value, Intents: intents,
				Ttl: durationpb.New(o.ttl), Reason: o.reason})
		}

		prog := newProgress(stderr, len(reqs))
		prog.stepf("read %d values", len(reqs))
		ctx, conn, done, err := af.conn(ctx, &wf)
		if err != nil {
			return err
		}
		defer done()
		c := mandatev1.NewAdminClient(conn)
		var (
			recs    []*mandatev1.Revocation
			version string
		)
		prog.stepf("sending %d records to mandate-cp in one batch (all or none are stored)", len(reqs))
		if len(reqs) == 1 {
			resp, err := c.Revoke(ctx, reqs[0])
			if err != nil {
				return rpcErr(err)
			}
			recs, version = []*mandatev1.Revocation{resp.GetRecord()}, resp.GetVersion()
		} else {
			resp, err := c.RevokeBatch(ctx, &mandatev1.RevokeBatchRequest{Revocations: reqs})
			if err != nil {
				return rpcErr(err)
			}
			recs, version = resp.GetRecords(), resp.GetVersion()
		}
		prog.stepf("stored %d records at revocation version %s", len(recs), version)
		what := "revocation"
		if len(intents) > 0 {
			what = "downgrade"
		}
		for _, rec := range recs {
			fmt.Fprintf(stdout, "%s %s: %s %s until %s (revocation version %s)\n", what, rec.GetName(), rec.GetKind(), rec.GetValue(),
				rec.GetExpires().AsTime().Local().Format(time.RFC3339), version)
		}
		waitWhat := what + " " + recs[0].GetName()
		if len(recs) > 1 {
			fmt.Fprintf(stdout, "%d %ss stored at revocation version %s\n", len(recs), what, version)
			waitWhat = fmt.Sprintf("%d %ss", len(recs), what)
		}
		if wf.wait {
			return waitAcked(ctx, c, &wf, mandatev1.RevocationTypeURL, version, waitWhat, stdout, stderr)
		}
		return nil
	}
}

// readRevokeFile reads values from path ("-": stdin): a YAML list of
// strings, or one value per line with blank lines and # comments skipped.
func readRevokeFile(path string, stdin io.Reader) ([]string, error) {
	var r io.Reader = stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, maxRevokeFile+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(data) > maxRevokeFile {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxRevokeFile)
	}
	return parseRevokeValues(path, data)
}

func parseRevokeValues(name string, data []byte) ([]string, error) {
	if isYAMLList(data) {
		var vs []string
		if err := yaml.UnmarshalStrict(data, &vs); err != nil {
			return nil, fmt.Errorf("%s: want a YAML list of strings: %w", name, err)
		}
		for i, v := range vs {
			if strings.TrimSpace(v) == "" {
				return nil, fmt.Errorf("%s: item %d is empty", name, i+1)
			}
			vs[i] = strings.TrimSpace(v)
		}
		return vs, nil
	}
	var vs []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.ContainsAny(line, " \t") {
			return nil, fmt.Errorf("%s:%d: %q: one value per line", name, n, line)
		}
		vs = append(vs, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return vs, nil
}

// isYAMLList reports whether the first line that is not blank or a
// comment starts a YAML sequence ("- x" or "[").
func isYAMLList(data []byte) bool {
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		return line == "-" || strings.HasPrefix(line, "- ") || strings.HasPrefix(line, "[")
	}
	return false
}
