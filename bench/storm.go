package main

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/mandate-dev/mandate/cp/admin"
	"github.com/mandate-dev/mandate/internal/envoyreq"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// Revocation storm (scenario 3) parameters.
const (
	stormBatch       = 1000
	stormInterval    = 100 * time.Millisecond
	stormWorkers     = 16
	stormSample      = 50 // subjects per batch checked before and after
	stormRevokeTTL   = time.Minute
	stormFirstRevoke = 1000 // the hottest zipf identities are never revoked
)

// stormStats is what the revoking side saw.
type stormStats struct {
	batches, revoked, sampled, staleAllows, primeDenied int
	ackLatency                                          []time.Duration
	elapsed                                             time.Duration
}

// revocationStorm runs scenario 3: mandate-cp feeds one mandate-authz over
// delta ADS; a paced zipf load runs against the replica while the harness
// revokes stormBatch subjects of that population every stormInterval
// through the Admin API. For a sample of each batch it checks that the
// subject is allowed before the revocation (so the allow is cached) and
// denied once the replica has ACKed it: an allow then is a stale allow.
func (h *harness) revocationStorm(ctx context.Context, sc scenario, r *result) error {
	cpBin, err := h.binary(ctx, h.cfg.cpBin, "mandate-cp", h.cfg.root, "./cmd/mandate-cp")
	if err != nil {
		return err
	}
	h.cfg.cpBin = cpBin
	cp, err := startServer(ctx, h.dir, sc.id+"-cp", cpBin, []string{
		"--data-dir", filepath.Join(h.dir, "cp-data"), "--plaintext", "--log-level", "warn",
		"--xds-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
	}, 60*time.Second)
	if err != nil {
		return err
	}
	defer cp.stop()
	if cp.addrs["xds"] == "" || cp.addrs["admin"] == "" {
		return fmt.Errorf("bench: mandate-cp addr file lacks xds or admin: %v", cp.addrs)
	}
	acc, err := grpc.NewClient(cp.addrs["admin"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	defer acc.Close()
	ac := admin.NewClient(acc)
	ap, err := ac.ApplyPolicies(ctx, &mandatev1.ApplyPoliciesRequest{Policies: []*mandatev1.Policy{
		{Name: "bench", Source: []byte(policyYAML(sc.rules)), SourceFile: "bench.yaml"}}})
	if err != nil {
		return fmt.Errorf("bench: apply policies: %w", err)
	}

	srv, err := startServer(ctx, h.dir, sc.id, h.authzBin, []string{
		"--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--plaintext",
		"--xds-server", cp.addrs["xds"], "--node-id", "bench-authz", "--decision-log", "off", "--log-level", "warn",
	}, 60*time.Second)
	if err != nil {
		return err
	}
	defer srv.stop()
	if err := waitReady(ctx, srv.metricsAddr, 30*time.Second); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err = ac.WaitAcked(wctx, &mandatev1.WaitAckedRequest{TypeUrl: mandatev1.PolicyTypeURL, Version: ap.GetVersion()})
	cancel()
	if err != nil {
		return fmt.Errorf("bench: policy not acked: %w", err)
	}
	cc, err := grpc.NewClient(srv.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	defer cc.Close()
	checker := authv3.NewAuthorizationClient(cc)

	w, err := newZipfWorkload(zipfIdentities, 1<<21, zipfS, 2)
	if err != nil {
		return err
	}
	spec := loadSpec{addr: srv.grpcAddr, concurrency: h.cfg.concurrency, rps: h.cfg.pacedRPS, work: w, duration: h.cfg.warmup}
	r.TargetRPS = float64(h.cfg.pacedRPS)
	if spec.duration > 0 {
		if _, err := runLoad(h.set, spec); err != nil {
			return fmt.Errorf("warmup: %w", err)
		}
	}
	before, err := scrape(ctx, srv.metricsAddr)
	if err != nil {
		return err
	}
	cpu0, err := cpuTime(srv.pid())
	if err != nil {
		return err
	}
	sctx, stopStorm := context.WithCancel(ctx)
	var st stormStats
	var stormErr error
	done := make(chan struct{})
	cpCPU0, err := cpuTime(cp.pid())
	if err != nil {
		stopStorm()
		return err
	}
	go func() { defer close(done); st, stormErr = storm(ctx, sctx, ac, checker) }()
	spec.duration = h.cfg.duration
	lr, lerr := runLoad(h.set, spec)
	stopStorm()
	<-done
	if lerr != nil {
		return lerr
	}
	cpu1, err := cpuTime(srv.pid())
	if err != nil {
		return err
	}
	cpCPU1, err := cpuTime(cp.pid())
	if err != nil {
		return err
	}
	if st.elapsed > 0 {
		r.Extra["cp_cpu_cores"] = (cpCPU1 - cpCPU0).Seconds() / st.elapsed.Seconds()
	}
	after, err := scrape(ctx, srv.metricsAddr)
	if err != nil {
		return err
	}
	mem, err := readMemory(srv.pid())
	if err != nil {
		return err
	}
	r.fill(lr, cpu1-cpu0, before, after, mem, true)
	stale := float64(st.staleAllows)
	r.StaleAllows = &stale
	r.Extra["revocations"] = float64(st.revoked)
	r.Extra["revoke_batches"] = float64(st.batches)
	if st.elapsed > 0 {
		r.Extra["revocations_per_s"] = float64(st.revoked) / st.elapsed.Seconds()
	}
	r.Extra["sampled_checks"] = float64(st.sampled)
	if n := len(st.ackLatency); n > 0 {
		sort.Slice(st.ackLatency, func(i, j int) bool { return st.ackLatency[i] < st.ackLatency[j] })
		r.Extra["batch_revoke_to_ack_p50_ms"] = float64(percentile(st.ackLatency, 0.5)) / 1e6
		r.Extra["batch_revoke_to_ack_max_ms"] = float64(st.ackLatency[n-1]) / 1e6
	}
	if st.primeDenied > 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("%d sampled subjects were denied before their revocation", st.primeDenied))
	}
	r.Notes = append(r.Notes, fmt.Sprintf("target %d revocations per %v (%.0f/s), one Admin Revoke call each; denials are expected (revoked callers)",
		stormBatch, stormInterval, stormBatch/stormInterval.Seconds()))
	if stormErr != nil {
		return stormErr
	}
	if lr.errors > 0 {
		return fmt.Errorf("%d of %d calls failed: %v", lr.errors, lr.count, lr.errorDist)
	}
	if st.primeDenied > 0 {
		return fmt.Errorf("%d sampled subjects were denied before their revocation: the scenario is misconfigured", st.primeDenied)
	}
	h.logf("%s: %.0f req/s, p99 %.0fµs, %d revocations in %d batches, %d stale allows",
		sc.id, r.RPS, r.P99us, st.revoked, st.batches, st.staleAllows)
	return nil
}

// storm revokes batches until stop ends; ctx bounds the calls, so the
// batch in progress when stop ends is cut short but still ACK-checked.
func storm(ctx, stop context.Context, ac *admin.Client, checker authv3.AuthorizationClient) (st stormStats, err error) {
	start := time.Now()
	defer func() { st.elapsed = time.Since(start) }()
	tick := time.NewTicker(stormInterval)
	defer tick.Stop()
	next := stormFirstRevoke
	for batch := 0; ; batch++ {
		ids := make([]string, stormBatch)
		for i := range ids {
			ids[i] = "spiffe://example.org/fleet/agent-" + strconv.Itoa(next)
			next++
			if next >= zipfIdentities {
				next = stormFirstRevoke
			}
		}
		sample := ids[:stormSample]
		// Prime: the sample is allowed now, and the allow is cached.
		for _, id := range sample {
			ok, err := allowed(ctx, checker, id)
			if err != nil {
				return st, err
			}
			if !ok {
				st.primeDenied++
			}
		}
		done, version, err := revokeAll(ctx, stop, ac, ids)
		if err != nil {
			return st, err
		}
		if version == "" {
			return st, nil
		}
		t0 := time.Now()
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err = ac.WaitAcked(wctx, &mandatev1.WaitAckedRequest{TypeUrl: mandatev1.RevocationTypeURL, Version: version})
		cancel()
		if err != nil {
			return st, fmt.Errorf("bench: revocation version %s not acked: %w", version, err)
		}
		st.ackLatency = append(st.ackLatency, time.Since(t0))
		st.batches++
		st.revoked += len(done)
		// Every revocation of the batch is ACKed: no allow may follow.
		for i, id := range sample {
			if !done[i] {
				continue
			}
			ok, err := allowed(ctx, checker, id)
			if err != nil {
				return st, err
			}
			st.sampled++
			if ok {
				st.staleAllows++
			}
		}
		select {
		case <-stop.Done():
			return st, nil
		case <-tick.C:
		}
	}
}

// revokeAll revokes ids with stormWorkers concurrent Admin calls, until
// stop ends. It returns which ids it revoked (by index) and the highest
// revocation version they produced ("" for none).
func revokeAll(ctx, stop context.Context, ac *admin.Client, ids []string) (map[int]bool, string, error) {
	done := map[int]bool{}
	var (
		mu       sync.Mutex
		best     uint64
		bestText string
		firstErr error
		next     atomic.Int64
		wg       sync.WaitGroup
	)
	for range stormWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(ids) || stop.Err() != nil {
					return
				}
				resp, err := ac.Revoke(ctx, &mandatev1.RevokeRequest{
					Kind: "subject", Value: ids[i], Ttl: durationpb.New(stormRevokeTTL), Reason: "bench revocation storm"})
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = fmt.Errorf("bench: revoke %s: %w", ids[i], err)
					}
					mu.Unlock()
					return
				}
				v, perr := strconv.ParseUint(resp.GetVersion(), 10, 64)
				if perr != nil && firstErr == nil {
					firstErr = fmt.Errorf("bench: revocation version %q is not a number", resp.GetVersion())
				}
				if v >= best {
					best, bestText = v, resp.GetVersion()
				}
				done[i] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return done, bestText, firstErr
}

// allowed sends one Check for subject on the scenario's route.
func allowed(ctx context.Context, c authv3.AuthorizationClient, subject string) (bool, error) {
	resp, err := c.Check(ctx, envoyreq.Build(envoyreq.Params{
		Principal: subject, Method: "GET", Path: "/tickets/1", Host: benchHost,
		Headers: [][2]string{{"x-mandate-intent", benchIntent}, {"x-mandate-task", "T"}, {"x-ticket", "T-1"}},
	}))
	if err != nil {
		return false, fmt.Errorf("bench: check %s: %w", subject, err)
	}
	return resp.GetStatus().GetCode() == int32(codes.OK), nil
}

// waitReady polls the replica's /readyz until it answers 200.
func waitReady(ctx context.Context, metricsAddr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+metricsAddr+"/readyz", nil)
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench: replica at %s not ready after %v", metricsAddr, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
