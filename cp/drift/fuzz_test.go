package drift

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// FuzzValidateEvent feeds arbitrary wire bytes as a ReplicaEvent: a
// replica report is network input. Validation must never panic, and
// whatever it accepts must hold only well-formed fields.
func FuzzValidateEvent(f *testing.F) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	seeds := []*mandatev1.ReplicaEvent{
		{Event: &mandatev1.ReplicaEvent_OutOfIntent{OutOfIntent: &mandatev1.OutOfIntentEvent{Subject: "spiffe://example.org/agent/a", Task: "t1", Intent: "triage", MandateId: "AAAAAAAAAAAAAAAAAAAAAA", Reason: "mandate_out_of_scope", Time: ts(now)}}},
		{Event: &mandatev1.ReplicaEvent_StepUp{StepUp: &mandatev1.StepUpEvent{Id: "ar-0123456789abcdef0123", Subject: "spiffe://example.org/agent/a", Task: "t1", Method: "POST", Path: "/pay", Policy: "p", Rule: "r", Time: ts(now)}}},
		{Event: &mandatev1.ReplicaEvent_StepUp{StepUp: &mandatev1.StepUpEvent{Id: "ar-0123456789abcdef0123", Subject: "spiffe://example.org/agent/a", Method: "POST", Path: "/pkg.S/M", Grpc: "pkg.S/M", Policy: "p", Rule: "r", Time: ts(now)}}},
	}
	for _, s := range seeds {
		b, err := proto.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var ev mandatev1.ReplicaEvent
		if proto.Unmarshal(data, &ev) != nil {
			return
		}
		if o := ev.GetOutOfIntent(); o != nil {
			got, err := ValidateOutOfIntent(o)
			if err == nil && (got.Subject == "" || got.Reason == "" || got.Time.IsZero() || len(got.Subject) > maxIDBytes) {
				t.Fatalf("accepted %+v", got)
			}
		}
		if s := ev.GetStepUp(); s != nil {
			got, err := ValidateStepUp(s)
			if err == nil && (len(got.ID) != 23 || got.Policy == "" || got.Rule == "" || (got.GRPC == "" && (got.Path == "" || got.Path[0] != '/'))) {
				t.Fatalf("accepted %+v", got)
			}
		}
	})
}
