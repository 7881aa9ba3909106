// Package report sends what a mandate-authz replica saw to mandate-cp:
// denials outside a declared intent or mandate scope (for drift detection)
// and step-up requests waiting for approval. The authz callbacks hand
// events over without blocking (a bounded queue; when it is full the event
// is dropped and counted); Run sends them in batches over the
// mandate.v1.Replicas/Report RPC, retrying with backoff.
package report

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/authz"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// ReportMethod is the full gRPC method name of Replicas.Report.
const ReportMethod = mandatev1.Replicas_Report_FullMethodName

// Defaults of Config.
const (
	DefaultQueueSize     = 4096
	DefaultBatchSize     = 100
	DefaultFlushInterval = 250 * time.Millisecond
	DefaultMinBackoff    = 100 * time.Millisecond
	DefaultMaxBackoff    = 5 * time.Second
	DefaultTimeout       = 5 * time.Second
	maxBatchSize         = 1000 // the control plane's limit per report
)

// Config configures a Reporter.
type Config struct {
	// Conn is a connection to mandate-cp, dialed with the replica's mTLS
	// identity (the cp authorizes reporters by SPIFFE ID). Required.
	Conn grpc.ClientConnInterface
	// QueueSize bounds the events waiting to be sent.
	QueueSize int
	// BatchSize is the most events per report (at most 1000).
	BatchSize int
	// FlushInterval is how long an event may wait for its batch to fill.
	FlushInterval time.Duration
	// MinBackoff and MaxBackoff bound the retry delay of a failed report.
	MinBackoff, MaxBackoff time.Duration
	// Timeout bounds one Report call.
	Timeout time.Duration
	// Registerer, when set, gets the reporter's metrics.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Reporter queues and sends events. It is safe for concurrent use.
type Reporter struct {
	cfg    Config
	client mandatev1.ReplicasClient
	log    *slog.Logger
	queue  chan *mandatev1.ReplicaEvent

	sent, dropped, failed atomic.Uint64
	unreported            atomic.Uint64 // drops not yet told to the cp

	mSent, mDropped, mFailed prometheus.Counter
}

// New validates cfg and returns a Reporter; call Run to send.
func New(cfg Config) (*Reporter, error) {
	if cfg.Conn == nil {
		return nil, errors.New("report: Conn is required")
	}
	if cfg.QueueSize == 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = DefaultFlushInterval
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	switch {
	case cfg.QueueSize < 1:
		return nil, fmt.Errorf("report: queue size %d", cfg.QueueSize)
	case cfg.BatchSize < 1 || cfg.BatchSize > maxBatchSize:
		return nil, fmt.Errorf("report: batch size %d outside [1, %d]", cfg.BatchSize, maxBatchSize)
	case cfg.FlushInterval < 0 || cfg.MinBackoff < 0 || cfg.MaxBackoff < cfg.MinBackoff || cfg.Timeout < 0:
		return nil, errors.New("report: negative interval, or max backoff below min backoff")
	}
	l := cfg.Logger
	if l == nil {
		l = slog.Default()
	}
	r := &Reporter{cfg: cfg, client: mandatev1.NewReplicasClient(cfg.Conn), log: l, queue: make(chan *mandatev1.ReplicaEvent, cfg.QueueSize),
		mSent:    prometheus.NewCounter(prometheus.CounterOpts{Name: "mandate_authz_report_events_sent_total", Help: "Events reported to mandate-cp."}),
		mDropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "mandate_authz_report_events_dropped_total", Help: "Events dropped because the report queue was full or a report was refused."}),
		mFailed:  prometheus.NewCounter(prometheus.CounterOpts{Name: "mandate_authz_report_failures_total", Help: "Report RPCs that failed (and were retried)."}),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{r.mSent, r.mDropped, r.mFailed} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("report: metrics: %w", err)
			}
		}
	}
	return r, nil
}

// OnOutOfIntent queues a drift event; use it as authz.Config.OnOutOfIntent.
// It never blocks.
func (r *Reporter) OnOutOfIntent(e authz.OutOfIntent) {
	r.enqueue(&mandatev1.ReplicaEvent{Event: &mandatev1.ReplicaEvent_OutOfIntent{OutOfIntent: &mandatev1.OutOfIntentEvent{
		Subject: e.Subject, Task: e.Task, Intent: e.Intent, MandateId: e.MandateID, Reason: e.Reason, Time: timestamppb.New(e.Time),
	}}})
}

// ClaimApproval claims one use of approval name from mandate-cp (the
// Replicas.ClaimApprovalUse RPC, as this replica); use it as
// authz.Config.ClaimApproval. Only the step-up path calls it; any error
// (exhausted, expired, unknown, unreachable, ctx's deadline) means deny.
func (r *Reporter) ClaimApproval(ctx context.Context, name string) error {
	if _, err := r.client.ClaimApprovalUse(ctx, &mandatev1.ClaimApprovalUseRequest{Name: name}); err != nil {
		return fmt.Errorf("report: claim approval use: %w", err)
	}
	return nil
}

// OnStepUp queues a step-up request; use it as authz.Config.OnStepUp. It
// never blocks.
func (r *Reporter) OnStepUp(e authz.StepUpRequest) {
	r.enqueue(&mandatev1.ReplicaEvent{Event: &mandatev1.ReplicaEvent_StepUp{StepUp: &mandatev1.StepUpEvent{
		Id: e.ID, Subject: e.Subject, Task: e.Task, Intent: e.Intent, Method: e.Method, Path: e.Path, Grpc: e.GRPC,
		Policy: e.Policy, Rule: e.Rule, Time: timestamppb.New(e.Time), Mcp: e.MCP, McpArguments: e.Arguments,
		Headers: e.Headers,
	}}})
}

func (r *Reporter) enqueue(ev *mandatev1.ReplicaEvent) {
	select {
	case r.queue <- ev:
	default:
		r.drop(1)
	}
}

func (r *Reporter) drop(n int) {
	r.dropped.Add(uint64(n))
	r.unreported.Add(uint64(n))
	r.mDropped.Add(float64(n))
}

// Stats returns how many events were sent, dropped, and how many reports
// failed.
func (r *Reporter) Stats() (sent, dropped, failedReports uint64) {
	return r.sent.Load(), r.dropped.Load(), r.failed.Load()
}

// Run sends batches until ctx ends; then it makes one last attempt, bounded
// by the Timeout, to send what is queued. It returns nil.
func (r *Reporter) Run(ctx context.Context) error {
	batch := make([]*mandatev1.ReplicaEvent, 0, r.cfg.BatchSize)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	armed := false
	for {
		select {
		case <-ctx.Done():
			r.drain(&batch)
			return nil
		case ev := <-r.queue:
			batch = append(batch, ev)
			if len(batch) >= r.cfg.BatchSize {
				if armed && !timer.Stop() {
					<-timer.C
				}
				armed = false
				r.send(ctx, batch)
				batch = batch[:0]
			} else if !armed {
				timer.Reset(r.cfg.FlushInterval)
				armed = true
			}
		case <-timer.C:
			armed = false
			if len(batch) > 0 {
				r.send(ctx, batch)
				batch = batch[:0]
			}
		}
	}
}

// drain sends what is left after ctx ended, once, within the Timeout.
func (r *Reporter) drain(batch *[]*mandatev1.ReplicaEvent) {
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.Timeout)
	defer cancel()
	for {
		for len(*batch) < r.cfg.BatchSize {
			select {
			case ev := <-r.queue:
				*batch = append(*batch, ev)
				continue
			default:
			}
			break
		}
		if len(*batch) == 0 {
			return
		}
		if err := r.call(ctx, *batch); err != nil {
			r.drop(len(*batch) + len(r.queue))
			r.log.Warn("final report failed; events dropped", "err", err)
			return
		}
		*batch = (*batch)[:0]
	}
}

// send delivers one batch, retrying with exponential backoff until it
// succeeds, the cp refuses it for good (InvalidArgument, PermissionDenied,
// Unauthenticated: the batch is dropped), or ctx ends (the batch is kept for
// the final drain).
func (r *Reporter) send(ctx context.Context, batch []*mandatev1.ReplicaEvent) {
	backoff := r.cfg.MinBackoff
	for {
		// An in-flight report is not cut short by the end of Run (the cp
		// may already have counted it): only the Timeout bounds it.
		err := r.call(context.WithoutCancel(ctx), batch)
		if err == nil {
			return
		}
		r.failed.Add(1)
		r.mFailed.Inc()
		switch status.Code(err) {
		case codes.InvalidArgument, codes.PermissionDenied, codes.Unauthenticated, codes.Unimplemented:
			r.drop(len(batch))
			r.log.Error("mandate-cp refused a report; events dropped", "events", len(batch), "err", err)
			return
		}
		r.log.Warn("report to mandate-cp failed; retrying", "events", len(batch), "backoff", backoff, "err", err)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			r.requeue(batch)
			return
		case <-t.C:
		}
		backoff = min(2*backoff, r.cfg.MaxBackoff)
	}
}

// requeue keeps a batch whose sending was cut short by the end of Run, for
// the final drain.
func (r *Reporter) requeue(batch []*mandatev1.ReplicaEvent) {
	for _, ev := range batch {
		r.enqueue(ev)
	}
}

func (r *Reporter) call(ctx context.Context, batch []*mandatev1.ReplicaEvent) error {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	dropped := r.unreported.Swap(0)
	req := &mandatev1.ReplicaReportRequest{Events: batch, Dropped: dropped}
	resp, err := r.client.Report(ctx, req)
	if err != nil {
		r.unreported.Add(dropped)
		return err
	}
	r.sent.Add(uint64(len(batch)))
	r.mSent.Add(float64(len(batch)))
	if resp.GetRejected() > 0 {
		r.log.Warn("mandate-cp rejected reported events", "rejected", resp.GetRejected())
	}
	return nil
}
