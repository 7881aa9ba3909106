package authz

import (
	"time"

	"github.com/mandate-dev/mandate/policies"
)

// Approval lets requests matching it through a step_up rule until it
// expires. Approvals are granted by a person through the control plane.
type Approval struct {
	ID      string
	Subject string
	Task    string
	Method  string
	Path    string
	GRPC    string // "pkg.Service/Method", for gRPC requests
	Policy  string
	Rule    string
	Expires time.Time
}

// ApprovalSet indexes approvals by subject. It is immutable.
type ApprovalSet struct {
	bySubject map[string][]Approval
}

// NewApprovalSet indexes approvals.
func NewApprovalSet(approvals []Approval) *ApprovalSet {
	s := &ApprovalSet{bySubject: make(map[string][]Approval, len(approvals))}
	for _, a := range approvals {
		s.bySubject[a.Subject] = append(s.bySubject[a.Subject], a)
	}
	return s
}

// Find returns the approval that covers the step_up decision d for r at
// now: the approval of r's own request id (stepUpID, which binds the
// action, the MCP argument values and the header values the step_up rule
// read), same subject, task and rule, not expired. Whether a use is left
// is the control plane's to say (Config.ClaimApproval).
func (s *ApprovalSet) Find(now time.Time, r *policies.Request, d *policies.Decision, id string) (Approval, bool) {
	if s == nil {
		return Approval{}, false
	}
	for _, a := range s.bySubject[r.Subject] {
		if a.ID != id || !now.Before(a.Expires) || a.Task != r.Task || a.Policy != d.Policy || a.Rule != d.Rule {
			continue
		}
		if r.GRPCService != "" {
			if a.GRPC == r.GRPCService+"/"+r.GRPCMethod {
				return a, true
			}
			continue
		}
		if a.Method == r.Method && a.Path == r.Path {
			return a, true
		}
	}
	return Approval{}, false
}
