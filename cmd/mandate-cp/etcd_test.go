package main

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/mandate-dev/mandate/internal/etcdtest"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// TestEtcdStandbyTakesOver: two mandate-cp on one 3-member etcd cluster.
// One leads and serves; the other waits without serving. kill -9 the
// leader: the standby takes over within the lease TTL (plus the time to
// start serving), with every revocation the leader committed.
func TestEtcdStandbyTakesOver(t *testing.T) {
	ctx := context.Background()
	c := etcdtest.Start(t, 3)
	kek := writeKEK(t)
	args := []string{"--plaintext", "--xds-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--metrics-addr", "", "--log-level", "warn", "--kek-file", kek, "--etcd-lease-ttl", "2s"}
	for _, ep := range c.Endpoints() {
		args = append(args, "--etcd-endpoint", ep)
	}
	leader := start(t, binCP, args...)
	standby := startNoWait(t, binCP, args...)
	if standby.tryAddrs(t, 2*time.Second) {
		t.Fatal("the standby serves while the leader leads")
	}
	lc := adminClient(t, leader)
	var revoked []string
	for i := range 3 {
		r, err := lc.Revoke(ctx, &mandatev1.RevokeRequest{Kind: "subject", Value: "spiffe://example.org/agent/a" + string(rune('0'+i)),
			Ttl: durationpb.New(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		revoked = append(revoked, r.GetRecord().GetName())
	}
	before, err := lc.ListRevocations(ctx, &mandatev1.ListRevocationsRequest{})
	if err != nil {
		t.Fatal(err)
	}

	killed := time.Now()
	leader.kill()
	standby.waitAddrs(t, 20*time.Second)
	t.Logf("standby serving %v after the leader's kill -9 (lease TTL 2s)", time.Since(killed).Round(time.Millisecond))
	sc := adminClient(t, standby)
	after, err := sc.ListRevocations(ctx, &mandatev1.ListRevocationsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if after.GetVersion() != before.GetVersion() || len(after.GetRevocations()) != len(revoked) {
		t.Fatalf("new leader: %d revocations at version %s; the old one had %d at %s",
			len(after.GetRevocations()), after.GetVersion(), len(revoked), before.GetVersion())
	}
	for i, r := range after.GetRevocations() {
		if r.GetName() != revoked[i] {
			t.Fatalf("revocation %d is %s, want %s", i, r.GetName(), revoked[i])
		}
	}
	// It writes on, above the old leader's versions.
	r, err := sc.Revoke(ctx, &mandatev1.RevokeRequest{Kind: "task", Value: "t-after", Ttl: durationpb.New(time.Hour)})
	if err != nil || mustVersion(t, r.GetVersion()) <= mustVersion(t, before.GetVersion()) {
		t.Fatalf("write on the new leader: %v, %v", r, err)
	}
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

// TestEtcdLeaderStopsWithoutQuorum: the leader cut off from etcd (two of
// three members killed: no quorum, its lease cannot be renewed) stops
// serving within the lease TTL and exits non-zero, rather than serving a
// state etcd can no longer vouch for.
func TestEtcdLeaderStopsWithoutQuorum(t *testing.T) {
	c := etcdtest.Start(t, 3)
	kek := writeKEK(t)
	leader := start(t, binCP, "--plaintext", "--xds-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--metrics-addr", "", "--log-level", "warn", "--kek-file", kek, "--etcd-lease-ttl", "2s",
		"--etcd-endpoint", c.Members[0].ClientURL)
	cut := time.Now()
	c.Kill(1)
	c.Kill(2)
	select {
	case <-leader.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the leader still runs 30s after etcd lost quorum")
	}
	b, _ := os.ReadFile(leader.log)
	if leader.err == nil || !strings.Contains(string(b), "lost the control-plane leadership") {
		t.Fatalf("exit %v, log:\n%s", leader.err, b)
	}
	t.Logf("leader stopped %v after etcd lost quorum (lease TTL 2s)", time.Since(cut).Round(time.Millisecond))
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
