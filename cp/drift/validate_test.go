package drift

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/authz"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

func ts(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }

func TestValidateEvents(t *testing.T) {
	now := ts(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	okO := func() *mandatev1.OutOfIntentEvent {
		return &mandatev1.OutOfIntentEvent{Subject: "spiffe://example.org/agent/a", Task: "t1", Intent: "triage", Reason: "no_match", Time: now}
	}
	okS := func() *mandatev1.StepUpEvent {
		e := &mandatev1.StepUpEvent{Subject: "spiffe://example.org/agent/a", Task: "t1",
			Method: "POST", Path: "/payments", Policy: "payments", Rule: "big", Time: now}
		e.Id = idOf(e)
		return e
	}
	if _, err := ValidateOutOfIntent(okO()); err != nil {
		t.Fatal(err)
	}
	if _, err := ValidateStepUp(okS()); err != nil {
		t.Fatal(err)
	}
	withAmount := okS()
	withAmount.Headers = map[string]string{"x-refund-amount": "600"}
	withAmount.Id = idOf(withAmount)
	if ev, err := ValidateStepUp(withAmount); err != nil || ev.Headers["x-refund-amount"] != "600" {
		t.Fatal(ev, err)
	}
	badO := map[string]func(*mandatev1.OutOfIntentEvent){
		"subject":      func(e *mandatev1.OutOfIntentEvent) { e.Subject = "agent-a" },
		"task":         func(e *mandatev1.OutOfIntentEvent) { e.Task = "t 1" },
		"reason":       func(e *mandatev1.OutOfIntentEvent) { e.Reason = "Out Of Scope" },
		"no reason":    func(e *mandatev1.OutOfIntentEvent) { e.Reason = "" },
		"mandate id":   func(e *mandatev1.OutOfIntentEvent) { e.MandateId = "a.b" },
		"no time":      func(e *mandatev1.OutOfIntentEvent) { e.Time = nil },
		"invalid time": func(e *mandatev1.OutOfIntentEvent) { e.Time = &timestamppb.Timestamp{Seconds: 1 << 62} },
	}
	for name, mod := range badO {
		e := okO()
		mod(e)
		if _, err := ValidateOutOfIntent(e); err == nil {
			t.Errorf("out_of_intent with bad %s accepted", name)
		}
	}
	badS := map[string]func(*mandatev1.StepUpEvent){
		"id": func(e *mandatev1.StepUpEvent) { e.Id = "ar-XYZ" },
		// A forged report: a well-formed id of another request paired
		// with this content (the operator would approve what it shows).
		"forged id":    func(e *mandatev1.StepUpEvent) { e.Id = "ar-0123456789abcdef0123" },
		"content swap": func(e *mandatev1.StepUpEvent) { e.Path = "/payments/999999999999" },
		// The id binds the header values the rule read: a report cannot
		// show "600" under the id of another amount.
		"header swap": func(e *mandatev1.StepUpEvent) { e.Headers = map[string]string{"x-refund-amount": "600"} },
		"header upper": func(e *mandatev1.StepUpEvent) {
			e.Headers = map[string]string{"X-Amount": "1"}
			e.Id = idOf(e)
		},
		"header long": func(e *mandatev1.StepUpEvent) {
			e.Headers = map[string]string{"x-amount": strings.Repeat("9", 2000)}
			e.Id = idOf(e)
		},
		"subject":     func(e *mandatev1.StepUpEvent) { e.Subject = "" },
		"policy":      func(e *mandatev1.StepUpEvent) { e.Policy = "" },
		"method":      func(e *mandatev1.StepUpEvent) { e.Method = "post" },
		"path":        func(e *mandatev1.StepUpEvent) { e.Path = "payments" },
		"path ctl":    func(e *mandatev1.StepUpEvent) { e.Path = "/a\nb" },
		"grpc":        func(e *mandatev1.StepUpEvent) { e.Grpc = "nomethod" },
		"grpc method": func(e *mandatev1.StepUpEvent) { e.Grpc = "a.S/M"; e.Method = "GET" },
		"mcp ctl":     func(e *mandatev1.StepUpEvent) { e.Mcp = "tools/call a\nb" },
		"mcp long":    func(e *mandatev1.StepUpEvent) { e.Mcp = strings.Repeat("a", 5000) },
		"mcp arguments without mcp": func(e *mandatev1.StepUpEvent) {
			e.McpArguments = map[string]string{"repo": `"w"`}
		},
		"mcp argument too long": func(e *mandatev1.StepUpEvent) {
			e.Mcp, e.McpArguments = "tools/call t", map[string]string{"repo": strings.Repeat("a", 2000)}
		},
		// The id binds the MCP call and the argument values the rule
		// read: a report cannot show one pull request under the id of
		// another, nor another tool.
		"mcp argument swap": func(e *mandatev1.StepUpEvent) {
			e.Mcp, e.McpArguments = "tools/call github.create_pull_request", map[string]string{"repo": `"widgets"`}
			e.Id = idOf(e)
			e.McpArguments["repo"] = `"secrets"`
		},
		"mcp tool swap": func(e *mandatev1.StepUpEvent) {
			e.Mcp, e.McpArguments = "tools/call github.create_pull_request", map[string]string{"repo": `"widgets"`}
			e.Id = idOf(e)
			e.Mcp = "tools/call github.delete_repository"
		},
		"mcp argument dropped": func(e *mandatev1.StepUpEvent) {
			e.Mcp, e.McpArguments = "tools/call github.create_pull_request", map[string]string{"repo": `"widgets"`}
			e.Id = idOf(e)
			e.McpArguments = nil
		},
		"mcp argument not UTF-8": func(e *mandatev1.StepUpEvent) {
			e.Mcp, e.McpArguments = "tools/call t", map[string]string{"repo": "\xff"}
		},
	}
	mcpOK := okS()
	mcpOK.Mcp, mcpOK.McpArguments = "tools/call github.create_pull_request", map[string]string{"repo": `"widgets"`, "base": `"main"`}
	mcpOK.Id = idOf(mcpOK)
	if ev, err := ValidateStepUp(mcpOK); err != nil || ev.MCP != mcpOK.Mcp || ev.MCPArguments["repo"] != `"widgets"` {
		t.Fatalf("MCP step-up: %+v, %v", ev, err)
	}
	for name, mod := range badS {
		e := okS()
		mod(e)
		if _, err := ValidateStepUp(e); err == nil {
			t.Errorf("step_up with bad %s accepted", name)
		}
	}
}

// idOf is the id a replica computes for the content of e.
func idOf(e *mandatev1.StepUpEvent) string {
	svc, m, _ := strings.Cut(e.GetGrpc(), "/")
	return authz.ApprovalRequestID(authz.StepUpContent{Subject: e.GetSubject(), Task: e.GetTask(), Method: e.GetMethod(),
		Path: e.GetPath(), GRPCService: svc, GRPCMethod: m, Policy: e.GetPolicy(), Rule: e.GetRule(),
		MCP: e.GetMcp(), MCPArguments: e.GetMcpArguments(), Headers: e.GetHeaders()})
}
