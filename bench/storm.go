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

	"github.com/mandate-dev/mandate/internal/envoyreq"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// Revocation storm (scenario 3) parameters.
const (
	stormBatch    = 1000
	stormInterval = 100 * time.Millisecond
	stormSample   = 50 // subjects per batch checked before and after
	stormInFlight = 4  // RevokeBatch calls (with their priming) under way at once
	// stormRevokeTTL is shorter than a pass over the population (99,000
	// subjects at 10,000/s): a subject revoked in the previous pass has
	// expired when it is primed again, in runs of any length.
	stormRevokeTTL   = 9 * time.Second
	stormFirstRevoke = 1000 // the hottest zipf identities are never revoked
)

// stormStats is what the revoking side saw.
type stormStats struct {
	batches, revoked, sampled, staleAllows, primeDenied int
	ackLatency, callLatency                             []time.Duration
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
	ac := mandatev1.NewAdminClient(acc)
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
	if n := len(st.callLatency); n > 0 {
		sort.Slice(st.callLatency, func(i, j int) bool { return st.callLatency[i] < st.callLatency[j] })
		r.Extra["batch_call_p50_ms"] = float64(percentile(st.callLatency, 0.5)) / 1e6
		r.Extra["batch_call_max_ms"] = float64(st.callLatency[n-1]) / 1e6
	}
	if st.primeDenied > 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("%d sampled subjects were denied before their revocation", st.primeDenied))
	}
	r.Notes = append(r.Notes, fmt.Sprintf("target %d revocations per %v (%.0f/s), one Admin RevokeBatch call per batch; denials are expected (revoked callers)",
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
	h.logf("%s: %.0f req/s, p99 %.0fµs, %d revocations in %d batches (%.0f/s), %d stale allows",
		sc.id, r.RPS, r.P99us, st.revoked, st.batches, r.Extra["revocations_per_s"], st.staleAllows)
	return nil
}

// storm starts one batch of stormBatch subjects every stormInterval, on
// schedule whether or not the previous batch's call has returned (an
// open-loop load, as independent operators or automation would send),
// with at most stormInFlight batches being primed or sent: when that many
// are, the next one waits, and the achieved rate shows it. Each batch primes its
// sample, sends one RevokeBatch, waits for the replica's ACK of the
// version and checks the sample again. ctx bounds the calls; stop ends
// the storm.
func storm(ctx, stop context.Context, ac mandatev1.AdminClient, checker authv3.AuthorizationClient) (st stormStats, err error) {
	start := time.Now()
	tick := time.NewTicker(stormInterval)
	defer tick.Stop()
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
	}
	failed := func() bool { mu.Lock(); defer mu.Unlock(); return firstErr != nil }
	slots := make(chan struct{}, stormInFlight)
	next := stormFirstRevoke
	for stop.Err() == nil && !failed() {
		select {
		case slots <- struct{}{}:
		case <-stop.Done():
			continue
		}
		ids := make([]string, stormBatch)
		for i := range ids {
			ids[i] = "spiffe://example.org/fleet/agent-" + strconv.Itoa(next)
			next++
			if next >= zipfIdentities {
				next = stormFirstRevoke
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := stormBatchRun(ctx, ac, checker, ids, slots, &mu, &st); err != nil {
				fail(err)
			}
		}()
		select {
		case <-stop.Done():
		case <-tick.C:
		}
	}
	st.elapsed = time.Since(start)
	wg.Wait()
	return st, firstErr
}

// stormBatchRun primes, revokes and checks one batch, adding to st under
// mu. It frees its slot once the RevokeBatch call returned: the slots
// bound the calls, the ACK waits run beside them.
func stormBatchRun(ctx context.Context, ac mandatev1.AdminClient, checker authv3.AuthorizationClient, ids []string,
	slot <-chan struct{}, mu *sync.Mutex, st *stormStats) error {
	freed := false
	free := func() {
		if !freed {
			freed = true
			<-slot
		}
	}
	defer free()
	sample := ids[:stormSample]
	// Prime: the sample is allowed now, and the allow is cached.
	allows, err := allowedAll(ctx, checker, sample)
	if err != nil {
		return err
	}
	reqs := make([]*mandatev1.RevokeRequest, len(ids))
	for i, id := range ids {
		reqs[i] = &mandatev1.RevokeRequest{Kind: "subject", Value: id,
			Ttl: durationpb.New(stormRevokeTTL), Reason: "bench revocation storm"}
	}
	t0 := time.Now()
	resp, err := ac.RevokeBatch(ctx, &mandatev1.RevokeBatchRequest{Revocations: reqs})
	if err != nil {
		return fmt.Errorf("bench: revoke batch: %w", err)
	}
	callTime := time.Since(t0)
	free()
	if n := len(resp.GetRecords()); n != len(ids) {
		return fmt.Errorf("bench: revoke batch stored %d records, want %d", n, len(ids))
	}
	mu.Lock()
	st.primeDenied += len(sample) - allows
	st.batches++
	st.revoked += len(ids)
	st.callLatency = append(st.callLatency, callTime)
	mu.Unlock()
	version := resp.GetVersion()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err = ac.WaitAcked(wctx, &mandatev1.WaitAckedRequest{TypeUrl: mandatev1.RevocationTypeURL, Version: version})
	cancel()
	if err != nil {
		return fmt.Errorf("bench: revocation version %s not acked: %w", version, err)
	}
	ack := time.Since(t0)
	// Every revocation of the batch is ACKed: no allow may follow.
	allows, err = allowedAll(ctx, checker, sample)
	if err != nil {
		return err
	}
	if time.Since(t0) > stormRevokeTTL-time.Second {
		return fmt.Errorf("bench: batch at version %s ACKed and checked only after %v: its records (ttl %v) may have expired", version, time.Since(t0), stormRevokeTTL)
	}
	mu.Lock()
	st.ackLatency = append(st.ackLatency, ack)
	st.sampled += len(sample)
	st.staleAllows += allows
	mu.Unlock()
	return nil
}

// allowedAll checks every subject concurrently and returns how many were
// allowed.
func allowedAll(ctx context.Context, c authv3.AuthorizationClient, subjects []string) (int, error) {
	var (
		wg       sync.WaitGroup
		allows   atomic.Int64
		errOnce  sync.Once
		firstErr error
	)
	for _, id := range subjects {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok, err := allowed(ctx, c, id)
			if err != nil {
				errOnce.Do(func() { firstErr = err })
				return
			}
			if ok {
				allows.Add(1)
			}
		}()
	}
	wg.Wait()
	return int(allows.Load()), firstErr
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
