package decisionlog

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"
)

// BenchmarkWrite is the cost of formatting and writing one record on the
// log goroutine: the decision rate one log goroutine sustains.
func BenchmarkWrite(b *testing.B) {
	l := &Logger{out: slog.New(slog.NewJSONHandler(io.Discard, nil))}
	r := Record{DecisionID: "2f0a2acbdfd849d60000000000000001", Time: time.Now(), Subject: "spiffe://example.org/agent/support/a1",
		Method: "GET", Path: "/tickets/T-1", Result: "allow", Reason: "allowed", Policy: "support", Rule: "read", PolicyVersion: "e196db982ffaa09a1d3e76bb2dc5dd25"}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		l.write(context.Background(), &r)
	}
}
