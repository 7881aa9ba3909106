package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/e2e/internal/agentproto"
	"github.com/mandate-dev/mandate/e2e/internal/proc"
)

// propagationGoal is the design's revocation propagation goal (p99).
const propagationGoal = 50 * time.Millisecond

// completeIterations: each completes one task under load; two replicas give
// two samples each.
const completeIterations = 10

// Scenario 4: task completion under steady load. For each iteration a
// fresh task's mandate is used by steady traffic through the proxy (both
// replicas serving it, their caches warm with allows); the orchestrator runs
// `mandatectl complete --wait`. Measured per replica: the time from the task
// revocation's creation (its created_at in the store) to the replica's first
// revoked deny, and from `complete` returning (every replica has ACKed) to
// that deny. Asserted: no allow decided by any replica after `complete`
// returned, no 200 for a request sent after it, the upstream saw exactly the
// allowed requests. The propagation percentiles are logged; they are
// compared with the goal only when MANDATE_E2E_PROPAGATION_GOAL=1 (a
// quiet machine: a shared CI box's load is not the code's latency).
func scenarioCompleteUnderLoad(t *testing.T, ctx context.Context, d *deployment) {
	a := d.agent(t, idWorker)
	var fromCreate, fromAck []time.Duration
	for i := range completeIterations {
		task := d.uniq("T4")
		base := "/s4/" + task
		tok, _ := d.issue(ctx, idWorker, task, "batch", "--methods", "GET", "--paths", base+"/**", "--ttl", "5m")
		stop := filepath.Join(t.TempDir(), fmt.Sprintf("stop-%d", i))
		type loadResult struct {
			r   agentproto.Response
			err error
		}
		done := make(chan loadResult, 1)
		go func() {
			r, err := a.Do(ctx, agentproto.Command{ID: task, Op: agentproto.OpLoad, Method: "GET", Path: base + "/item", Mandate: tok,
				Load: &agentproto.Load{Concurrency: 4, MaxMS: 30000, StopFile: stop}})
			done <- loadResult{r, err}
		}()
		stopLoad := func() loadResult {
			if err := os.WriteFile(stop, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			return <-done
		}
		// Both replicas serve the task before it is completed.
		err := proc.Poll(ctx, 20*time.Millisecond, func(context.Context) error {
			for _, r := range d.replicas {
				if n := countDecisions(d.decisions(t, r), task, "allow", time.Time{}); n < 5 {
					return fmt.Errorf("%s: %d allows for %s", r.name, n, task)
				}
			}
			return nil
		})
		if err != nil {
			stopLoad()
			t.Fatal(err)
		}
		callStart := time.Now()
		// The operator completes it (the orchestrator may too: see
		// TestFlows/4b-orchestrator-complete-wait).
		out := d.ctl(ctx, "operator", "complete", "--reason", "e2e: task done", "--wait", task)
		acked := time.Now()
		if out.code != 0 || !strings.Contains(out.stdout, "enforced by 2/2 replicas") {
			stopLoad()
			t.Fatalf("complete: %s", out)
		}
		// Keep the load on until each replica has decided requests that
		// started well after the ACK.
		err = proc.Poll(ctx, 20*time.Millisecond, func(context.Context) error {
			for _, r := range d.replicas {
				if n := countDecisions(d.decisions(t, r), task, "", acked.Add(100*time.Millisecond)); n < 5 {
					return fmt.Errorf("%s: %d decisions for %s after the ACK", r.name, n, task)
				}
			}
			return nil
		})
		res := stopLoad()
		if err != nil {
			t.Fatal(err)
		}
		if res.err != nil || res.r.Error != "" {
			t.Fatalf("load: %v %s", res.err, res.r.Error)
		}

		var created time.Time
		for _, rv := range d.revocations(t, ctx) {
			if rv.Kind == "task" && rv.Value == task {
				created = rv.CreatedAt
			}
		}
		if created.IsZero() {
			t.Fatalf("no task revocation for %s", task)
		}
		for _, r := range d.replicas {
			recs := d.decisions(t, r)
			var first *decision
			for i := range recs {
				rec := &recs[i]
				if rec.Task != task {
					continue
				}
				if rec.Result == "allow" && rec.Time.After(acked) {
					t.Errorf("%s allowed %s (decision %s at %s) after complete returned at %s",
						r.name, task, rec.DecisionID, rec.Time.Format(time.RFC3339Nano), acked.Format(time.RFC3339Nano))
				}
				if rec.Result == "deny" && first == nil {
					if rec.Reason != "revoked" {
						t.Errorf("%s: first deny of %s has reason %q", r.name, task, rec.Reason)
					}
					first = rec
				}
			}
			if first == nil {
				t.Fatalf("%s never denied %s", r.name, task)
			}
			fromCreate = append(fromCreate, first.Time.Sub(created))
			fromAck = append(fromAck, first.Time.Sub(acked))
			t.Logf("iteration %d %s: first deny %v after the revocation was stored, %v after complete returned (complete call %v: %q)",
				i, r.name, first.Time.Sub(created).Round(10*time.Microsecond), first.Time.Sub(acked).Round(10*time.Microsecond),
				acked.Sub(callStart).Round(time.Millisecond), lastLine(out.stdout))
		}

		// What the agent saw, and what reached the upstream.
		allowedIDs := map[string]bool{}
		var n200, n403 int
		for _, lr := range res.r.Results {
			switch {
			case lr.Error != "":
				t.Errorf("request failed: %s", lr.Error)
			case lr.Status == 200:
				n200++
				allowedIDs[lr.DecisionID] = true
				if time.Unix(0, lr.StartNS).After(acked) {
					t.Errorf("request sent %v after complete returned got 200", time.Unix(0, lr.StartNS).Sub(acked))
				}
			case lr.Status == 403 && lr.Reason == "revoked" && lr.Outcome == "denied":
				n403++
			default:
				t.Errorf("unexpected response %+v", lr)
			}
		}
		seenReqs := d.seenWithPrefix(t, ctx, base)
		if len(seenReqs) != n200 {
			t.Errorf("upstream saw %d requests of %s, the agent got %d allows", len(seenReqs), task, n200)
		}
		for _, s := range seenReqs {
			if v := s.Headers["X-Mandate-Decision-Id"]; len(v) != 1 || !allowedIDs[v[0]] {
				t.Errorf("upstream saw a request the agent was not allowed: %v", v)
			}
		}
		if n200 == 0 || n403 == 0 {
			t.Errorf("load of %s: %d allowed, %d denied: the load did not span the completion", task, n200, n403)
		}
	}
	sortDur(fromCreate)
	sortDur(fromAck)
	p99 := percentile(fromCreate, 0.99)
	t.Logf("propagation (revocation stored -> first deny, %d samples over 2 replicas): p50 %v p99 %v max %v",
		len(fromCreate), percentile(fromCreate, 0.5), p99, fromCreate[len(fromCreate)-1])
	t.Logf("complete returned -> first deny: p50 %v p99 %v (negative: the replica denied before the CLI returned)",
		percentile(fromAck, 0.5), percentile(fromAck, 0.99))
	goal := propagationGoal
	if raceBuild {
		// The race detector slows the binaries 5-10x; the goal is for
		// production builds, so -race runs get 4x headroom.
		goal *= 4
	}
	if os.Getenv("MANDATE_E2E_PROPAGATION_GOAL") == "1" && p99 > goal {
		t.Errorf("propagation p99 %v exceeds %v (goal %v, race build %v)", p99, goal, propagationGoal, raceBuild)
	}
}

// The orchestrator that issued a task's mandates completes the task and
// waits for every replica to enforce it (cp/MANDATES.md walk-through:
// `mandatectl complete T-42 --reason "ticket closed" --wait`). This found a
// bug: Admin.WaitAcked was operator-only.
func orchestratorCompleteWait(t *testing.T, ctx context.Context, d *deployment) {
	task := d.uniq("Tbug")
	d.issue(ctx, idWorker, task, "batch", "--methods", "GET", "--paths", "/bug/"+task+"/**", "--ttl", "5m")
	out := d.ctl(ctx, "orchestrator", "complete", "--reason", "done", "--wait", task)
	if out.code != 0 || !strings.Contains(out.stdout, "enforced by 2/2 replicas") {
		t.Fatalf("orchestrator complete --wait: %s", out)
	}
}

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}

// countDecisions counts a task's decisions with result (any when empty)
// decided after since.
func countDecisions(recs []decision, task, result string, since time.Time) int {
	n := 0
	for _, r := range recs {
		if r.Task == task && (result == "" || r.Result == result) && r.Time.After(since) {
			n++
		}
	}
	return n
}

func sortDur(ds []time.Duration) { sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] }) }

// percentile of sorted ds (nearest rank).
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	i := int(float64(len(ds))*p+0.999999) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(ds) {
		i = len(ds) - 1
	}
	return ds[i].Round(10 * time.Microsecond)
}
