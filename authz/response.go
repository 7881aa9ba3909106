package authz

import (
	"strconv"
	"strings"
	"unsafe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"

	"github.com/mandate-dev/mandate/authz/mcp"
	"github.com/mandate-dev/mandate/policies"
)

// Header names Mandate reads or writes.
const (
	HeaderDecisionID = "x-mandate-decision-id"
	HeaderMandate    = "x-mandate"
	HeaderTask       = "x-mandate-task"
)

// allowParts holds the messages an allow response does not share with
// others, in one allocation.
type allowParts struct {
	// decisionID holds the bytes of the decision id string.
	decisionID decisionID
	resp       authv3.CheckResponse
	ok         authv3.CheckResponse_OkResponse
	okResp     authv3.OkHttpResponse
	opts       [2]*corev3.HeaderValueOption
	id         corev3.HeaderValueOption
	idHV       corev3.HeaderValue
}

// allowTaskParts adds the task header, for an allow that cannot share
// one (a miss, or a hit without its memo).
type allowTaskParts struct {
	allowParts
	task   corev3.HeaderValueOption
	taskHV corev3.HeaderValue
}

// allowShared is what every allow response shares; never modified (gRPC
// only reads a response, and concurrent marshalling of one message is
// safe). The upstream never sees the mandate: it is a credential for
// this hop only.
type allowShared struct {
	status *rpcstatus.Status
	remove []string
}

func newAllowShared() allowShared {
	return allowShared{status: &rpcstatus.Status{Code: int32(codes.OK)}, remove: []string{HeaderMandate}}
}

// overwrite is a response header that replaces whatever the client sent.
func overwrite(key, value string) *corev3.HeaderValueOption {
	o := &corev3.HeaderValueOption{}
	setOverwrite(o, &corev3.HeaderValue{}, key, value)
	return o
}

// setOverwrite makes o (with its header hv) a header that replaces
// whatever the client sent.
func setOverwrite(o *corev3.HeaderValueOption, hv *corev3.HeaderValue, key, value string) {
	hv.Key, hv.Value = key, value
	o.Header = hv
	o.AppendAction = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
}

// allowResponse lets the request through with the decision id and, when
// the request has a task (declared or from its mandate), the task the
// decision was made for (taskHdr: the x-mandate-task header, shared by
// the hits of one cached decision, or nil to build it); both overwrite
// whatever the client sent. It returns the decision id as a string too,
// whose bytes the response's allocation holds (never modified).
func (s *Server) allowResponse(id *decisionID, task string, taskHdr *corev3.HeaderValueOption) (*authv3.CheckResponse, string) {
	var p *allowParts
	if task != "" && taskHdr == nil {
		tp := &allowTaskParts{}
		setOverwrite(&tp.task, &tp.taskHV, HeaderTask, task)
		p, taskHdr = &tp.allowParts, &tp.task
	} else {
		p = &allowParts{}
	}
	p.decisionID = *id
	decisionID := unsafe.String(&p.decisionID[0], len(p.decisionID))
	setOverwrite(&p.id, &p.idHV, HeaderDecisionID, decisionID)
	p.opts[0] = &p.id
	n := 1
	if task != "" {
		p.opts[1] = taskHdr
		n++
	}
	p.okResp.Headers = p.opts[:n]
	p.okResp.HeadersToRemove = s.allow.remove
	p.ok.OkResponse = &p.okResp
	p.resp.Status = s.allow.status
	p.resp.HttpResponse = &p.ok
	return &p.resp, decisionID
}

// denyResponse is RPC OK with PERMISSION_DENIED and a small JSON body that
// names the decision and a reason code, never policy internals.
func denyResponse(decisionID string, out *outcome) *authv3.CheckResponse {
	code := typev3.StatusCode_Forbidden
	if out.effect == policies.EffectStepUp {
		code = typev3.StatusCode_Unauthorized
	}
	body := make([]byte, 0, 96)
	body = append(body, `{"decision_id":`...)
	body = strconv.AppendQuote(body, decisionID)
	body = append(body, `,"reason":`...)
	body = strconv.AppendQuote(body, out.reason)
	hdrs := []*corev3.HeaderValueOption{
		{Header: &corev3.HeaderValue{Key: "content-type", Value: "application/json"}},
		{Header: &corev3.HeaderValue{Key: HeaderDecisionID, Value: decisionID}},
	}
	if out.approval != "" {
		body = append(body, `,"approval_request":`...)
		body = strconv.AppendQuote(body, out.approval)
		hdrs = append(hdrs, &corev3.HeaderValueOption{
			Header: &corev3.HeaderValue{Key: "www-authenticate", Value: `Mandate-Approval request="` + out.approval + `"`},
		})
	}
	body = append(body, "}\n"...)
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(codes.PermissionDenied)},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: code},
			Headers: hdrs,
			Body:    string(body),
		}},
	}
}

// JSON-RPC error codes of MCP denials: -32001 refused by policy, -32002
// waiting for a person's approval, and JSON-RPC's own -32700 (parse
// error) and -32600 (invalid request) for requests Mandate could not
// read.
const (
	rpcCodeDenied         = -32001
	rpcCodeStepUp         = -32002
	rpcCodeParseError     = -32700
	rpcCodeInvalidRequest = -32600
)

// mcpDenyResponse answers a deny on an MCP route the way an MCP client
// understands: a JSON-RPC error response echoing the request's id (null
// when it could not be read), HTTP 403 (401 for step-up), with the
// decision id, reason code and approval-request id in error.data. Like
// every deny body it names no policy or rule.
func mcpDenyResponse(decisionID, rpcID string, out *outcome) *authv3.CheckResponse {
	resp := denyResponse(decisionID, out)
	code, msg := rpcCodeDenied, "denied by Mandate"
	switch {
	case out.effect == policies.EffectStepUp:
		code, msg = rpcCodeStepUp, "approval required"
	case out.reason == string(mcp.ReasonMalformed) || out.reason == string(mcp.ReasonBadUTF8):
		code, msg = rpcCodeParseError, "parse error"
	case strings.HasPrefix(out.reason, "mcp_"):
		code, msg = rpcCodeInvalidRequest, "invalid request"
	}
	if rpcID == "" {
		rpcID = "null"
	}
	body := make([]byte, 0, 192)
	body = append(body, `{"jsonrpc":"2.0","id":`...)
	body = append(body, rpcID...)
	body = append(body, `,"error":{"code":`...)
	body = strconv.AppendInt(body, int64(code), 10)
	body = append(body, `,"message":`...)
	body = strconv.AppendQuote(body, msg)
	body = append(body, `,"data":{"decision_id":`...)
	body = strconv.AppendQuote(body, decisionID)
	body = append(body, `,"reason":`...)
	body = strconv.AppendQuote(body, out.reason)
	if out.approval != "" {
		body = append(body, `,"approval_request":`...)
		body = strconv.AppendQuote(body, out.approval)
	}
	body = append(body, "}}}\n"...)
	resp.GetDeniedResponse().Body = string(body)
	return resp
}
