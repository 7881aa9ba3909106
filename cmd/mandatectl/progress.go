package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"time"

	mandatev1 "github.com/mandate-dev/mandate/xds/mandatev1"
)

// Progress on long work goes to stderr, so stdout stays the result a
// script reads. Only large work (at least progressItems items) and slow
// waits (past progressDelay) report, so quick commands print what they
// always printed.
const (
	progressItems = 100
	progressDelay = time.Second
	progressPoll  = 500 * time.Millisecond
)

// progress prints timestamped steps of one command's long work.
type progress struct {
	w     io.Writer
	start time.Time
	on    bool
}

// newProgress reports on w when the work has at least progressItems items.
func newProgress(w io.Writer, items int) *progress {
	return &progress{w: w, start: time.Now(), on: items >= progressItems}
}

func (p *progress) stepf(format string, args ...any) {
	if !p.on {
		return
	}
	fmt.Fprintf(p.w, "[%6s] %s\n", fmtDur(time.Since(p.start).Round(time.Millisecond)), fmt.Sprintf(format, args...))
}

// watchAcks reports, once a --wait has lasted progressDelay, how many
// replicas have ACKed typeURL at version (or later), each time that number
// changes, until ctx ends. It reads the control plane's status, so it
// needs nothing of the wait itself.
func watchAcks(ctx context.Context, c mandatev1.AdminClient, typeURL, version string, w io.Writer) {
	want, err := parseVersion(version)
	if err != nil {
		return
	}
	start := time.Now()
	select {
	case <-ctx.Done():
		return
	case <-time.After(progressDelay):
	}
	tick := time.NewTicker(progressPoll)
	defer tick.Stop()
	last := ""
	for {
		if st, err := c.Status(ctx, &mandatev1.StatusRequest{}); err == nil {
			acked, connected := countReplicas(st.GetReplicas(), typeURL, want)
			line := fmt.Sprintf("ACKed by %d/%d connected replicas", acked, connected)
			if line != last && ctx.Err() == nil {
				fmt.Fprintf(w, "[%6s] %s\n", fmtDur(time.Since(start).Round(time.Millisecond)), line)
				last = line
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// countReplicas counts the connected replicas, and those that ACKed
// typeURL at want or later. A node id connected to several instances of a
// fleet (one row each) is one replica, ACKed when every row says so.
func countReplicas(rows []*mandatev1.ReplicaStatus, typeURL string, want uint64) (acked, connected int) {
	lag := map[string]bool{}
	for _, r := range rows {
		if !r.GetConnected() {
			continue
		}
		ok := false
		for _, ts := range r.GetTypes() {
			if v, err := parseVersion(ts.GetAckedVersion()); ts.GetTypeUrl() == typeURL && err == nil && v >= want {
				ok = true
			}
		}
		lag[r.GetNodeId()] = lag[r.GetNodeId()] || !ok
	}
	for _, l := range lag {
		if !l {
			acked++
		}
	}
	return acked, len(lag)
}

func parseVersion(v string) (uint64, error) { return strconv.ParseUint(v, 10, 64) }
