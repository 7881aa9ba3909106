package main

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/xds/mandatev1"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

// fakeStatus answers Status with a fixed response.
type fakeStatus struct {
	mandatev1.UnimplementedAdminServer
	resp *mandatev1.StatusResponse
}

func (f *fakeStatus) Status(context.Context, *mandatev1.StatusRequest) (*mandatev1.StatusResponse, error) {
	return f.resp, nil
}

func serveStatus(t *testing.T, resp *mandatev1.StatusResponse) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	mandatev1.RegisterAdminServer(g, &fakeStatus{resp: resp})
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return lis.Addr().String()
}

var statusNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func typeStatus(url, acked, nacked, nackErr string, lag time.Duration) *mandatev1.ReplicaTypeStatus {
	return &mandatev1.ReplicaTypeStatus{TypeUrl: url, SentVersion: acked, AckedVersion: acked, NackedVersion: nacked,
		NackError: nackErr, Lag: durationpb.New(lag)}
}

func replicaVersions() map[string]string {
	return map[string]string{mandatev1.PolicyTypeURL: "3", mandatev1.RevocationTypeURL: "7",
		mandatev1.ApprovalTypeURL: "0", mandatev1.VerificationKeyTypeURL: "1"}
}

func replica() *mandatev1.ReplicaStatus {
	return &mandatev1.ReplicaStatus{NodeId: "authz-1", Connected: true, Streams: 1, Types: []*mandatev1.ReplicaTypeStatus{
		typeStatus(mandatev1.PolicyTypeURL, "3", "", "", 0), typeStatus(mandatev1.RevocationTypeURL, "6", "", "", 2*time.Second),
		typeStatus(mandatev1.ApprovalTypeURL, "0", "", "", 0), typeStatus(mandatev1.VerificationKeyTypeURL, "1", "", "", 0)}}
}

func TestPrintStatus(t *testing.T) {
	replicaTable := "control plane versions: policy=3 revocation=7 approval=0 key=1\n" +
		"NODE     CONNECTED  POLICY  REVOCATION  APPROVAL  KEY  LAG  NACK\n" +
		"authz-1  yes        3       6           0         1    2s   -\n"
	tests := []struct {
		name    string
		resp    *mandatev1.StatusResponse
		out     string
		errOut  string
		missing []string
	}{
		{
			name: "no Envoy: no Envoy table",
			resp: &mandatev1.StatusResponse{Versions: replicaVersions(), Replicas: []*mandatev1.ReplicaStatus{replica()},
				EnvoyVersions: map[string]string{envoyListenerTypeURL: "0", envoyClusterTypeURL: "0"}},
			out:     replicaTable,
			missing: []string{"LISTENER", "envoy"},
		},
		{
			name: "Envoys connected, one NACK, one gone",
			resp: &mandatev1.StatusResponse{Versions: replicaVersions(), Replicas: []*mandatev1.ReplicaStatus{replica()},
				EnvoyVersions: map[string]string{envoyListenerTypeURL: "2", envoyClusterTypeURL: "1"},
				Envoys: []*mandatev1.ReplicaStatus{
					{NodeId: "tickets-api-sidecar", Connected: true, Streams: 1, Types: []*mandatev1.ReplicaTypeStatus{
						typeStatus(envoyListenerTypeURL, "1", "2", "listener inbound_mtls: port in use", 7*time.Second),
						typeStatus(envoyClusterTypeURL, "1", "", "", 0)}},
					{NodeId: "edge-1", LastSeen: timestamppb.New(statusNow.Add(-90 * time.Second)), Types: []*mandatev1.ReplicaTypeStatus{
						typeStatus(envoyClusterTypeURL, "1", "", "", 0)}},
				}},
			out: replicaTable + "\n" +
				"envoy versions: listener=2 cluster=1\n" +
				"NODE                 CONNECTED       LISTENER    CLUSTER  NACK                                            LAG\n" +
				"tickets-api-sidecar  yes             1 (NACK 2)  1        listener 2: listener inbound_mtls: port in use  7s\n" +
				"edge-1               no (1m30s ago)  -           1        -                                               0\n",
			errOut: "NACK: tickets-api-sidecar rejected listener version 2: listener inbound_mtls: port in use\n",
		},
		{
			name: "listeners set, no Envoy yet",
			resp: &mandatev1.StatusResponse{Versions: replicaVersions(),
				EnvoyVersions: map[string]string{envoyListenerTypeURL: "1", envoyClusterTypeURL: "1"}},
			out: "control plane versions: policy=3 revocation=7 approval=0 key=1\n" +
				"NODE  CONNECTED  POLICY  REVOCATION  APPROVAL  KEY  LAG  NACK\n" +
				"no replica has connected\n\n" +
				"envoy versions: listener=1 cluster=1\n" +
				"NODE  CONNECTED  LISTENER  CLUSTER  NACK  LAG\n" +
				"no envoy has connected\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			printStatus(&out, &errOut, tt.resp, statusNow)
			if out.String() != tt.out {
				t.Errorf("stdout:\n%s\nwant:\n%s", out.String(), tt.out)
			}
			if errOut.String() != tt.errOut {
				t.Errorf("stderr:\n%s\nwant:\n%s", errOut.String(), tt.errOut)
			}
			for _, m := range tt.missing {
				if strings.Contains(out.String(), m) {
					t.Errorf("stdout has %q:\n%s", m, out.String())
				}
			}
		})
	}
}

// TestStatusCommandShowsEnvoys runs `mandatectl status` against an Admin
// server.
func TestStatusCommandShowsEnvoys(t *testing.T) {
	addr := serveStatus(t, &mandatev1.StatusResponse{Versions: replicaVersions(),
		EnvoyVersions: map[string]string{envoyListenerTypeURL: "4", envoyClusterTypeURL: "2"},
		Envoys: []*mandatev1.ReplicaStatus{{NodeId: "front-proxy", Connected: true, Types: []*mandatev1.ReplicaTypeStatus{
			typeStatus(envoyListenerTypeURL, "3", "", "", 1500*time.Millisecond), typeStatus(envoyClusterTypeURL, "2", "", "", 0)}}}})
	code, out, errOut := runCLI(t, "status", "--plaintext", "--addr", addr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"envoy versions: listener=4 cluster=2", "LISTENER", "front-proxy", "1.5s"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = runCLI(t, "status", "--plaintext", "--addr", addr, "-o", "json")
	if code != 0 || !strings.Contains(out, `"envoys"`) || !strings.Contains(out, `"envoyVersions"`) {
		t.Fatalf("json (exit %d):\n%s", code, out)
	}
}

// The CLI names the Envoy types without importing the xDS server.
func TestEnvoyTypeURLs(t *testing.T) {
	if envoyListenerTypeURL != xdsserver.ListenerTypeURL || envoyClusterTypeURL != xdsserver.ClusterTypeURL {
		t.Fatalf("CLI type URLs %q %q, server %q %q", envoyListenerTypeURL, envoyClusterTypeURL,
			xdsserver.ListenerTypeURL, xdsserver.ClusterTypeURL)
	}
}
