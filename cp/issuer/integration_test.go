package issuer_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/authz"
	"github.com/mandate-dev/mandate/authz/decisioncache"
	"github.com/mandate-dev/mandate/authz/identity"
	"github.com/mandate-dev/mandate/authz/mandate"
	"github.com/mandate-dev/mandate/authz/report"
	"github.com/mandate-dev/mandate/cp/drift"
	"github.com/mandate-dev/mandate/cp/issuance"
	"github.com/mandate-dev/mandate/cp/issuer"
	"github.com/mandate-dev/mandate/cp/issuer/rpcutil"
	"github.com/mandate-dev/mandate/cp/plane"
	"github.com/mandate-dev/mandate/cp/stepup"
	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/cp/store/boltstore"
	"github.com/mandate-dev/mandate/policies"
	"github.com/mandate-dev/mandate/xds/mandatev1"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

const (
	cpID     = "spiffe://example.org/mandate/cp"
	orch     = "spiffe://example.org/orchestrator"
	agentA   = "spiffe://example.org/agent/a"
	agentB   = "spiffe://example.org/agent/b"
	operator = "spiffe://example.org/mandate/operator"
)

const policy = `apiVersion: mandate.dev/v1
kind: IssuancePolicy
rules:
  - name: orch
    callers: ["spiffe://example.org/orchestrator"]
    subjects: ["spiffe://example.org/agent/*"]
    intents: ["triage"]
    maxTTL: 10m
    scope:
      methods: [GET, POST]
      paths: ["/tickets/**"]
`

type cp struct {
	plane *plane.Plane
	st    *store.DB
	conn  *grpc.ClientConn

	mandates  mandatev1.MandatesClient
	approvals mandatev1.ApprovalsClient
	replicas  mandatev1.ReplicasClient
}

// startCP wires the real plane (store in t.TempDir, xDS server) and the
// mandate services on a plaintext loopback gRPC server, as mandate-cp
// --plaintext does.
func startCP(t *testing.T) *cp {
	t.Helper()
	ctx := context.Background()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := boltstore.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	opts, err := plane.ServerOptions(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	xs, err := xdsserver.New(logger, opts...)
	if err != nil {
		t.Fatal(err)
	}
	pl, err := plane.New(ctx, st, xs, logger)
	if err != nil {
		t.Fatal(err)
	}
	pol, err := issuance.Parse("issuance.yaml", []byte(policy))
	if err != nil {
		t.Fatal(err)
	}
	identify := func(ctx context.Context) (string, error) { return rpcutil.Identify(ctx, true) }
	// In dev mode the operator check accepts the plaintext caller.
	op := func(ctx context.Context) (string, error) {
		id, err := identify(ctx)
		if err != nil || (id != operator && id != rpcutil.PlaintextActor) {
			return "", status.Error(codes.PermissionDenied, "not an operator")
		}
		return id, nil
	}
	is, err := issuer.New(issuer.Config{Plane: pl, Store: st, Policy: pol, Issuer: cpID, Identify: identify, Operator: op, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	if err := is.Start(ctx); err != nil {
		t.Fatal(err)
	}
	su, err := stepup.New(stepup.Config{Plane: pl, Operator: op, Logger: logger, Uses: st})
	if err != nil {
		t.Fatal(err)
	}
	dd, err := drift.New(drift.Config{Plane: pl, Actor: cpID, Logger: logger, Rules: []drift.Rule{{
		Name: "agents", Subjects: []string{"spiffe://example.org/agent/*"}, Threshold: 2,
		Window: drift.Duration(time.Minute), Action: drift.ActionRevoke}}})
	if err != nil {
		t.Fatal(err)
	}
	rp, err := drift.NewReplicas(drift.ReplicasConfig{Identify: identify, Replicas: []string{"spiffe://example.org/mandate/authz"},
		AllowPlaintext: true, Drift: dd, StepUps: su, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	is.Register(gs)
	su.Register(gs)
	rp.Register(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &cp{plane: pl, st: st, conn: conn, mandates: mandatev1.NewMandatesClient(conn),
		approvals: mandatev1.NewApprovalsClient(conn), replicas: mandatev1.NewReplicasClient(conn)}
}

func as(id string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), rpcutil.DevCallerHeader, id)
}

// replicaVerifier verifies with the VerificationKey resources the plane
// publishes to replicas.
func replicaVerifier(t *testing.T, c *cp) *mandate.Verifier {
	t.Helper()
	ks := c.plane.VerificationKeys()
	var keys []mandate.Key
	for _, k := range ks {
		keys = append(keys, mandate.Key{ID: k.GetName(), Public: k.GetPublicKey(), NotBefore: k.GetNotBefore().AsTime(), NotAfter: k.GetNotAfter().AsTime()})
	}
	v, err := mandate.NewVerifier(mandate.VerifierConfig{Issuer: cpID, Audience: "mandate", Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestMandatesOverTheRealPlane(t *testing.T) {
	c := startCP(t)
	scope := &mandatev1.MandateScope{Methods: []string{"GET"}, Paths: []string{"/tickets/**"}}

	// Issue, as the orchestrator; the token verifies with the published keys.
	iss, err := c.mandates.IssueMandate(as(orch),
		&mandatev1.IssueMandateRequest{Subject: agentA, Task: "task-7", Intent: "triage", Scope: scope, Ttl: durationpb.New(5 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	claims, err := replicaVerifier(t, c).Verify(iss.GetToken())
	if err != nil || claims.Subject != agentA || claims.ID != iss.GetId() {
		t.Fatalf("issued token does not verify with the published keys: %v %+v", err, claims)
	}
	if _, err := c.mandates.IssueMandate(as(agentA),
		&mandatev1.IssueMandateRequest{Subject: agentA, Task: "task-7", Intent: "triage", Scope: scope}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("agent issuing for itself: %v", err)
	}

	// Delegate, as the holder; not as anyone else; never wider.
	del, err := c.mandates.Delegate(as(agentA),
		&mandatev1.DelegateMandateRequest{ParentToken: iss.GetToken(), To: agentB, Scope: &mandatev1.MandateScope{Methods: []string{"GET"}, Paths: []string{"/tickets/1"}}})
	if err != nil || del.GetDepth() != 1 {
		t.Fatalf("delegate: %v %v", del, err)
	}
	if _, err := c.mandates.Delegate(as(agentB),
		&mandatev1.DelegateMandateRequest{ParentToken: iss.GetToken(), To: agentB, Scope: scope}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("delegation by a non-holder: %v", err)
	}
	if _, err := c.mandates.Delegate(as(agentA),
		&mandatev1.DelegateMandateRequest{ParentToken: iss.GetToken(), To: agentB, Scope: &mandatev1.MandateScope{Paths: []string{"/**"}}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("widening delegation: %v", err)
	}

	// A replica's reporter sends a step-up request; an operator approves it.
	rep, err := report.New(report.Config{Conn: c.conn, FlushInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { rep.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	// The replica's id of this request, which mandate-cp recomputes.
	arID := authz.ApprovalRequestID(authz.StepUpContent{Subject: agentA, Task: "task-7", Method: "POST",
		Path: "/tickets/1/close", Policy: "tickets", Rule: "close"})
	rep.OnStepUp(authz.StepUpRequest{ID: arID, Subject: agentA, Task: "task-7", Intent: "triage",
		Method: "POST", Path: "/tickets/1/close", Policy: "tickets", Rule: "close", Time: time.Now()})
	var list *mandatev1.ListApprovalRequestsResponse
	deadline := time.Now().Add(10 * time.Second)
	for {
		list, err = c.approvals.List(context.Background(), &mandatev1.ListApprovalRequestsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.GetRequests()) == 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if len(list.GetRequests()) != 1 || list.GetRequests()[0].GetPath() != "/tickets/1/close" {
		t.Fatalf("approvals = %v", list)
	}
	if _, err := c.approvals.Approve(as(agentA), &mandatev1.ApproveStepUpRequest{Id: arID}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("approval by an agent: %v", err)
	}
	ap, err := c.approvals.Approve(as(operator),
		&mandatev1.ApproveStepUpRequest{Id: arID, Window: durationpb.New(2 * time.Minute)})
	if err != nil || ap.GetVersion() == "" {
		t.Fatal(ap, err)
	}
	approvals := c.plane.Approvals()
	if len(approvals) != 1 || approvals[0].GetApprovedBy() != operator || approvals[0].GetSubject() != agentA || approvals[0].GetRule() != "close" {
		t.Fatalf("plane approvals = %v", approvals)
	}
	// Approval reuse: the approval has one use (the default), claimed
	// by replicas only, once fleet-wide.
	claim := &mandatev1.ClaimApprovalUseRequest{Name: arID}
	if _, err := c.replicas.ClaimApprovalUse(as(agentA), claim); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("claim by an agent: %v", err)
	}
	if got, err := c.replicas.ClaimApprovalUse(as("spiffe://example.org/mandate/authz"), claim); err != nil || got.GetUsed() != 1 || got.GetMax() != 1 {
		t.Fatalf("first claim: %v %v", got, err)
	}
	if _, err := c.replicas.ClaimApprovalUse(as("spiffe://example.org/mandate/authz"), claim); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("second claim of a one-use approval: %v", err)
	}
	if _, err := c.replicas.ClaimApprovalUse(as("spiffe://example.org/mandate/authz"),
		&mandatev1.ClaimApprovalUseRequest{Name: "ar-unknown"}); status.Code(err) != codes.NotFound {
		t.Fatalf("claim of an unknown approval: %v", err)
	}
	if _, err := c.approvals.Deny(as(operator), &mandatev1.DenyStepUpRequest{Id: arID}); err != nil {
		t.Fatal(err)
	}
	if len(c.plane.Approvals()) != 0 {
		t.Fatal("deny did not withdraw the approval")
	}

	// Drift: a non-replica may not report; 3 out-of-intent denials
	// (threshold 2) without a mandate revoke the subject that made them
	// once (a task is counted only through a verified mandate of it).
	ev := func() *mandatev1.ReplicaEvent {
		return &mandatev1.ReplicaEvent{Event: &mandatev1.ReplicaEvent_OutOfIntent{OutOfIntent: &mandatev1.OutOfIntentEvent{
			Subject: agentB, Task: "task-9", Intent: "triage", Reason: "mandate_out_of_scope", Time: timestamppb.Now()}}}
	}
	if _, err := c.replicas.Report(as(agentA),
		&mandatev1.ReplicaReportRequest{Events: []*mandatev1.ReplicaEvent{ev(), ev(), ev()}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("report from an agent: %v", err)
	}
	rr, err := c.replicas.Report(context.Background(),
		&mandatev1.ReplicaReportRequest{Events: []*mandatev1.ReplicaEvent{ev(), ev(), ev(), ev(), {}}})
	if err != nil || rr.GetAccepted() != 4 || rr.GetRejected() != 1 {
		t.Fatal(rr, err)
	}
	revs, _ := c.plane.Revocations(false)
	if len(revs) != 1 || revs[0].GetKind() != "subject" || revs[0].GetValue() != agentB || !strings.HasPrefix(revs[0].GetReason(), "drift: 3 out-of-intent requests in 1m0s") || revs[0].GetCreatedBy() != cpID {
		t.Fatalf("revocations after drift = %v", revs)
	}

	// Complete the task: the orchestrator may; afterwards no delegation.
	if _, err := c.mandates.CompleteTask(as(agentB), &mandatev1.CompleteTaskRequest{Task: "task-7"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("complete by a stranger: %v", err)
	}
	ct, err := c.mandates.CompleteTask(as(orch), &mandatev1.CompleteTaskRequest{Task: "task-7", Reason: "done"})
	if err != nil || ct.GetRevocationId() == "" || ct.GetVersion() == "" {
		t.Fatal(ct, err)
	}
	if _, err := c.mandates.Delegate(as(agentA),
		&mandatev1.DelegateMandateRequest{ParentToken: iss.GetToken(), To: agentB, Scope: scope}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("delegation of a completed task's mandate: %v", err)
	}
	keys, err := c.mandates.VerificationKeys(context.Background(), &mandatev1.MandateKeysRequest{})
	if err != nil || len(keys.GetKeys()) != 1 || keys.GetIssuer() != cpID {
		t.Fatal(keys, err)
	}
}

// mcpStepUpPolicy: a pull request to main needs a person's approval.
const mcpStepUpPolicy = `apiVersion: mandate.dev/v1
kind: Policy
metadata: {name: coder}
spec:
  rules:
    - name: pr
      effect: allow
      subjects: ["spiffe://example.org/agent/a"]
      actions: [{mcp: {tools: [github.create_pull_request]}}]
    - name: pr-to-main
      effect: step_up
      subjects: ["spiffe://example.org/agent/a"]
      actions: [{mcp: {tools: [github.create_pull_request]}}]
      when: 'mcp.arguments.base == "main"'
`

// TestMCPStepUpApprovedOnceThroughTheRealClaim: an approved MCP tool call
// (approve --uses 1) is allowed once, fleet-wide counted by mandate-cp's
// Replicas.ClaimApprovalUse, and the same call again needs a new approval.
// A replica is a real authz.Server (with its decision cache) whose
// ClaimApproval is the real reporter calling the real plane over gRPC:
// were the claim skipped on MCP routes, the second call would be allowed.
func TestMCPStepUpApprovedOnceThroughTheRealClaim(t *testing.T) {
	c := startCP(t)
	rep, err := report.New(report.Config{Conn: c.conn, FlushInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { rep.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	res, err := identity.New(identity.Config{TrustDomains: []spiffeid.TrustDomain{spiffeid.RequireTrustDomainFromString("example.org")}})
	if err != nil {
		t.Fatal(err)
	}
	ps, err := policies.Parse("coder.yaml", []byte(mcpStepUpPolicy))
	if err != nil {
		t.Fatal(err)
	}
	set, err := policies.Compile(ps)
	if err != nil {
		t.Fatal(err)
	}
	states := authz.NewStateStore(nil)
	states.Update(func(s *authz.State) { s.Policies = set })
	cache, err := decisioncache.New(decisioncache.Config{MaxEntries: 100, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	srv, err := authz.NewServer(authz.Config{Identity: res, State: states, Cache: cache,
		OnStepUp: rep.OnStepUp, ClaimApproval: rep.ClaimApproval, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	body := `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"github.create_pull_request",` +
		`"arguments":{"owner":"acme","repo":"widgets","base":"main","title":"Fix"}}}`
	call := func() (allowed bool, reason, approval string) {
		t.Helper()
		resp, err := srv.Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source:            &authv3.AttributeContext_Peer{Principal: agentA},
			ContextExtensions: map[string]string{"protocol": "mcp"},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: "POST", Path: "/mcp", Host: "github-mcp", Body: body,
				Headers: map[string]string{":method": "POST", ":path": "/mcp", "content-type": "application/json",
					"mcp-method": "tools/call", "mcp-name": "github.create_pull_request"},
			}},
		}})
		if err != nil {
			t.Fatalf("Check: RPC error %v", err)
		}
		if codes.Code(resp.GetStatus().GetCode()) == codes.OK {
			return true, "", ""
		}
		var rpc struct {
			Error struct {
				Data struct {
					Reason   string `json:"reason"`
					Approval string `json:"approval_request"`
				} `json:"data"`
			} `json:"error"`
		}
		if err := json.Unmarshal([]byte(resp.GetDeniedResponse().GetBody()), &rpc); err != nil {
			t.Fatalf("deny body %q: %v", resp.GetDeniedResponse().GetBody(), err)
		}
		return false, rpc.Error.Data.Reason, rpc.Error.Data.Approval
	}

	allowed, reason, arID := call()
	if allowed || reason != "step_up_required" || arID == "" {
		t.Fatalf("unapproved pull request to main: allowed=%v reason=%q approval=%q", allowed, reason, arID)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		list, err := c.approvals.List(context.Background(), &mandatev1.ListApprovalRequestsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.GetRequests()) == 1 && list.GetRequests()[0].GetId() == arID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("approval request %s never listed: %v", arID, list)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := c.approvals.Approve(as(operator),
		&mandatev1.ApproveStepUpRequest{Id: arID, Window: durationpb.New(2 * time.Minute), Uses: 1}); err != nil {
		t.Fatal(err)
	}
	// The replica receives the approval (as xDS would deliver it).
	var approvals []authz.Approval
	for _, a := range c.plane.Approvals() {
		approvals = append(approvals, authz.Approval{ID: a.GetName(), Subject: a.GetSubject(), Task: a.GetTask(),
			Method: a.GetMethod(), Path: a.GetPath(), GRPC: a.GetGrpc(), Policy: a.GetPolicy(), Rule: a.GetRule(),
			Expires: a.GetExpires().AsTime()})
	}
	if len(approvals) != 1 || approvals[0].ID != arID {
		t.Fatalf("plane approvals = %+v, want %s", approvals, arID)
	}
	states.Update(func(s *authz.State) { s.Approvals = authz.NewApprovalSet(approvals) })

	if allowed, reason, _ := call(); !allowed {
		t.Fatalf("approved pull request denied (%s)", reason)
	}
	for i := 0; i < 2; i++ {
		if allowed, reason, again := call(); allowed || reason != "step_up_required" || again != arID {
			t.Fatalf("call %d after the one use: allowed=%v reason=%q approval=%q, want step_up_required on %s",
				i+2, allowed, reason, again, arID)
		}
	}
}
