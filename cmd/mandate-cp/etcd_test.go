package main

import (
	"context"
	"encoding/base64"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/mandate-dev/mandate/internal/etcdtest"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// etcdArgs are the flags of a mandate-cp instance on c.
func etcdArgs(t *testing.T, endpoints []string, extra ...string) []string {
	args := []string{"--plaintext", "--xds-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--metrics-addr", "127.0.0.1:0", "--log-level", "warn", "--kek-file", writeKEK(t), "--etcd-lease-ttl", "2s"}
	for _, ep := range endpoints {
		args = append(args, "--etcd-endpoint", ep)
	}
	return append(args, extra...)
}

// twoInstances starts a 3-member etcd cluster and two mandate-cp on it,
// with their admin clients.
func twoInstances(t *testing.T) (a, b *proc, ac, bc mandatev1.AdminClient) {
	t.Helper()
	c := etcdtest.Start(t, 3)
	a = start(t, binCP, etcdArgs(t, c.Endpoints())...)
	b = start(t, binCP, etcdArgs(t, c.Endpoints())...)
	return a, b, adminClient(t, a), adminClient(t, b)
}

// TestEtcdInstancesServeTogether: two mandate-cp on one 3-member etcd
// cluster both serve xDS and the admin API at once. A write through A
// reaches a replica connected to B (B follows etcd), at the same global
// version, which B's WaitAcked counts; both answer the same state. kill
// -9 A: B goes on serving and writing, above A's versions.
func TestEtcdInstancesServeTogether(t *testing.T) {
	ctx := context.Background()
	a, b, ac, bc := twoInstances(t)
	onB := newChecker(t, startAuthz(t, b.addrs["xds"], "authz-on-b"))
	waitFor(t, "the replica on B", func() bool {
		st, err := bc.Status(ctx, &mandatev1.StatusRequest{})
		return err == nil && len(st.GetReplicas()) == 1
	})
	waitAcked(ctx, t, bc, mandatev1.PolicyTypeURL, applyReports(ctx, t, ac), 1)
	const subject = "spiffe://example.org/agent/mallory"
	mustAllowed(ctx, t, onB, subject, true)
	r, err := ac.Revoke(ctx, &mandatev1.RevokeRequest{Kind: "subject", Value: subject, Ttl: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	waitAcked(ctx, t, bc, mandatev1.RevocationTypeURL, r.GetVersion(), 1)
	mustAllowed(ctx, t, onB, subject, false)
	mustAllowed(ctx, t, onB, "spiffe://example.org/agent/bob", true)
	la, err := ac.ListRevocations(ctx, &mandatev1.ListRevocationsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	lb, err := bc.ListRevocations(ctx, &mandatev1.ListRevocationsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if la.GetVersion() != r.GetVersion() || lb.GetVersion() != r.GetVersion() || len(lb.GetRevocations()) != 1 ||
		lb.GetRevocations()[0].GetName() != r.GetRecord().GetName() {
		t.Fatalf("A answers %d revocations at %s, B %d at %s; the write returned %s",
			len(la.GetRevocations()), la.GetVersion(), len(lb.GetRevocations()), lb.GetVersion(), r.GetVersion())
	}

	a.kill()
	r2, err := bc.Revoke(ctx, &mandatev1.RevokeRequest{Kind: "task", Value: "t-after", Ttl: durationpb.New(time.Hour)})
	if err != nil || mustVersion(t, r2.GetVersion()) <= mustVersion(t, r.GetVersion()) {
		t.Fatalf("write on B after A died: %v, %v", r2, err)
	}
	waitAcked(ctx, t, bc, mandatev1.RevocationTypeURL, r2.GetVersion(), 1)
}

// TestEtcdRequiresKEKAndTLS: on etcd, signing keys are never stored in
// the clear and a non-loopback etcd is never spoken to in plaintext.
func TestEtcdRequiresKEKAndTLS(t *testing.T) {
	kek := writeKEK(t)
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"no kek", []string{"--etcd-endpoint", "http://127.0.0.1:1"}, "requires --kek-file"},
		{"plaintext", []string{"--etcd-endpoint", "http://10.1.2.3:2379", "--kek-file", kek}, "plaintext only on loopback"},
	} {
		err := run(context.Background(), append([]string{"--plaintext", "--metrics-addr", ""}, tt.args...), discardW{})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
}

func mustVersion(t tb, v string) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		t.Fatalf("version %q: %v", v, err)
	}
	return n
}

// TestEtcdCutOffInstanceFailsSafe: an instance whose etcd lost its
// quorum answers writes with gRPC Unavailable "etcd unavailable" at once
// (nothing is written; a write whose Txn was already sent says its
// outcome is unknown), closes its replicas' xDS streams after
// --etcd-grace and refuses new ones, and is not ready; once the quorum is
// back it serves and writes again, without a restart.
func TestEtcdCutOffInstanceFailsSafe(t *testing.T) {
	ctx := context.Background()
	c := etcdtest.Start(t, 3)
	a := start(t, binCP, etcdArgs(t, []string{c.Members[0].ClientURL}, "--etcd-grace", "1s")...)
	ac := adminClient(t, a)
	revoke := func(value string) (*mandatev1.RevokeResponse, error) {
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		return ac.Revoke(cctx, &mandatev1.RevokeRequest{Kind: "subject", Value: "spiffe://example.org/agent/" + value,
			Ttl: durationpb.New(time.Hour)})
	}
	before, err := revoke("before")
	if err != nil {
		t.Fatal(err)
	}
	// A replica's stream, held open.
	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(dial(t, a.addrs["xds"])).DeltaAggregatedResources(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "replica"},
		TypeUrl: mandatev1.RevocationTypeURL, ResourceNamesSubscribe: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	if r, err := stream.Recv(); err != nil || len(r.GetResources()) != 1 {
		t.Fatalf("first response: %v, %v", r, err)
	}
	recvErr := make(chan error, 1)
	var closedAt time.Time
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				closedAt = time.Now()
				recvErr <- err
				return
			}
			_ = stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce()})
		}
	}()

	cut := time.Now()
	c.Kill(1)
	c.Kill(2)
	// The first write may wait for etcd's own timeout; from then on
	// writes fail at once.
	var werr error
	for range 20 {
		if _, werr = revoke("during"); werr != nil {
			break
		}
	}
	t.Logf("first write refused %v after the quorum was lost: %v", time.Since(cut).Round(time.Millisecond), werr)
	if status.Code(werr) != codes.Unavailable || !strings.Contains(status.Convert(werr).Message(), "etcd unavailable") {
		t.Fatalf("write without quorum: %v, want Unavailable \"etcd unavailable: ...\"", werr)
	}
	began := time.Now()
	if _, err := revoke("during-2"); status.Code(err) != codes.Unavailable {
		t.Fatalf("second write without quorum: %v", err)
	}
	if d := time.Since(began); d > time.Second {
		t.Fatalf("a write without quorum took %v to be refused", d)
	}
	select {
	case err := <-recvErr:
		if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "etcd unavailable") {
			t.Fatalf("stream ended with %v, want Unavailable naming etcd", err)
		}
		t.Logf("stream closed %v after the quorum was lost (grace 1s)", closedAt.Sub(cut).Round(time.Millisecond))
	case <-time.After(30 * time.Second):
		t.Fatal("the replica's stream is still open 30s after etcd lost quorum")
	}
	if s, err := discovery.NewAggregatedDiscoveryServiceClient(dial(t, a.addrs["xds"])).DeltaAggregatedResources(sctx); err == nil {
		_ = s.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "replica-2"}, TypeUrl: mandatev1.RevocationTypeURL,
			ResourceNamesSubscribe: []string{"*"}})
		if _, err := s.Recv(); status.Code(err) != codes.Unavailable {
			t.Fatalf("new stream without quorum: %v, want Unavailable", err)
		}
	}
	if got := ready(a); got != http.StatusServiceUnavailable {
		t.Fatalf("/readyz without quorum: %d", got)
	}

	c.Restart(1)
	waitFor(t, "ready again", func() bool { return ready(a) == http.StatusOK })
	var after *mandatev1.RevokeResponse
	if err := etcdtest.WaitHealthy(withTimeout(t, 30*time.Second), func(context.Context) error {
		after, err = revoke("after")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	list, err := ac.ListRevocations(ctx, &mandatev1.ListRevocationsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range list.GetRevocations() {
		names = append(names, r.GetValue())
	}
	// A write refused before it reached etcd is never stored; the one
	// whose Txn was sent as the quorum went away may be (etcd commits
	// what its leader had appended once a quorum is back), and only if
	// its error said so.
	want := []string{"before", "after"}
	if strings.Contains(werr.Error(), "outcome unknown") {
		want = append(want, "during")
	}
	for _, n := range names {
		if !slices.Contains(want, strings.TrimPrefix(n, "spiffe://example.org/agent/")) {
			t.Fatalf("stored after the outage: %v (a refused write is there; first refusal: %v)", names, werr)
		}
	}
	for _, n := range []string{"before", "after"} {
		if !slices.Contains(names, "spiffe://example.org/agent/"+n) {
			t.Fatalf("stored after the outage: %v, %s missing", names, n)
		}
	}
	if mustVersion(t, after.GetVersion()) <= mustVersion(t, before.GetVersion()) {
		t.Fatalf("versions: before %s, after %s", before.GetVersion(), after.GetVersion())
	}
}

func withTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// writeKEK writes a key-encryption key file and returns its path.
func writeKEK(t tb) string {
	t.Helper()
	kek := filepath.Join(t.TempDir(), "kek")
	if err := os.WriteFile(kek, []byte("kek-1 "+base64.StdEncoding.EncodeToString(make([]byte, 32))+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return kek
}
