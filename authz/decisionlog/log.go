// Package decisionlog writes one structured record per authorization
// decision, off the request path.
//
// Check hands a Record to Log, which copies it into a bounded queue and
// returns at once; a single goroutine formats and writes records through
// log/slog. When the queue is full the record is dropped and counted: the
// decision path never waits for the log.
package decisionlog

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Record is one decision.
type Record struct {
	DecisionID string
	// RequestID is Envoy's request id (attributes.request.http.id) and
	// TraceID the trace id of the request's W3C traceparent, so that a
	// decision joins the request's trace.
	RequestID     string
	TraceID       string
	Time          time.Time
	Subject       string
	Destination   string
	Chain         []string
	MandateID     string
	Task          string
	Intent        string
	Method        string
	Path          string
	Host          string
	Result        string // allow | deny | step_up
	Reason        string
	Policy        string
	Rule          string
	PolicyVersion string
	DryRun        string
	CacheHit      bool
	Latency       time.Duration

	// The MCP request on routes labelled protocol: mcp. MCPArguments is
	// the raw params.arguments JSON (validated): the logger writes its
	// member names and SHA-256, and the value itself (redacted) only
	// when Config.MCPArguments opts in.
	MCPRequestID string
	MCPMethod    string
	MCPTool      string
	MCPResource  string
	MCPArguments string
}

// Logger queues records and writes them in the background.
type Logger struct {
	out     *slog.Logger
	queue   chan Record
	dropped atomic.Uint64
	written atomic.Uint64
	onDrop  func()
	args    bool
	redact  []string
	done    chan struct{}
	stop    chan struct{} // closed by Close
	closed  atomic.Bool
	once    sync.Once
}

// Config configures a Logger.
type Config struct {
	// Out receives the records. Required.
	Out *slog.Logger
	// QueueSize bounds the records waiting to be written (default 8192).
	QueueSize int
	// OnDrop is called (on the request path, so keep it cheap: a counter)
	// for each record dropped because the queue was full.
	OnDrop func()
	// MCPArguments writes MCP tool arguments in records, with the values
	// of members named in Redact (at any depth, ignoring case) replaced.
	// Off by default: records carry only argument names and a hash.
	MCPArguments bool
	Redact       []string
}

// New starts a Logger; it runs until ctx is done or Close is called.
func New(ctx context.Context, cfg Config) (*Logger, error) {
	if cfg.Out == nil {
		return nil, errors.New("decisionlog: Out is required")
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 8192
	}
	l := &Logger{
		out:    cfg.Out,
		queue:  make(chan Record, cfg.QueueSize),
		onDrop: cfg.OnDrop,
		args:   cfg.MCPArguments,
		redact: cfg.Redact,
		done:   make(chan struct{}),
		stop:   make(chan struct{}),
	}
	go l.run(ctx)
	return l, nil
}

// Log queues r. It never blocks.
func (l *Logger) Log(r Record) {
	if l == nil {
		return
	}
	// The queue is never closed, so a Check still running while the
	// server shuts down cannot panic here; after Close records are dropped.
	if l.closed.Load() {
		l.drop()
		return
	}
	select {
	case l.queue <- r:
	default:
		l.drop()
	}
}

func (l *Logger) drop() {
	l.dropped.Add(1)
	if l.onDrop != nil {
		l.onDrop()
	}
}

// Dropped returns how many records were dropped.
func (l *Logger) Dropped() uint64 { return l.dropped.Load() }

// Written returns how many records were written.
func (l *Logger) Written() uint64 { return l.written.Load() }

// Close stops accepting records, writes what is queued and returns.
func (l *Logger) Close() {
	l.once.Do(func() {
		l.closed.Store(true)
		close(l.stop)
	})
	<-l.done
}

func (l *Logger) run(ctx context.Context) {
	defer close(l.done)
	for {
		select {
		case r := <-l.queue:
			l.write(ctx, &r)
		case <-ctx.Done():
			l.drain(context.WithoutCancel(ctx))
			return
		case <-l.stop:
			l.drain(context.WithoutCancel(ctx))
			return
		}
	}
}

// drain writes what is already queued.
func (l *Logger) drain(ctx context.Context) {
	for {
		select {
		case r := <-l.queue:
			l.write(ctx, &r)
		default:
			return
		}
	}
}

func (l *Logger) write(ctx context.Context, r *Record) {
	attrs := []slog.Attr{
		slog.String("decision_id", r.DecisionID),
		slog.String("request_id", r.RequestID),
		slog.String("trace_id", r.TraceID),
		slog.String("result", r.Result),
		slog.String("reason", r.Reason),
		slog.String("subject", r.Subject),
		slog.String("destination", r.Destination),
		slog.String("method", r.Method),
		slog.String("path", r.Path),
		slog.String("host", r.Host),
		slog.String("intent", r.Intent),
		slog.String("task", r.Task),
		slog.String("mandate_id", r.MandateID),
		slog.Any("chain", r.Chain),
		slog.String("policy", r.Policy),
		slog.String("rule", r.Rule),
		slog.String("policy_version", r.PolicyVersion),
		slog.String("dry_run", r.DryRun),
		slog.Bool("cache_hit", r.CacheHit),
		slog.Int64("latency_ns", r.Latency.Nanoseconds()),
	}
	if r.MCPMethod != "" {
		attrs = append(attrs, l.mcpAttrs(r))
	}
	// The record's time is the decision's, not the time it was written.
	t := r.Time
	if t.IsZero() {
		t = time.Now()
	}
	rec := slog.NewRecord(t, slog.LevelInfo, "decision", 0)
	rec.AddAttrs(attrs...)
	if h := l.out.Handler(); h.Enabled(ctx, slog.LevelInfo) {
		_ = h.Handle(ctx, rec)
	}
	l.written.Add(1)
}
