package drift

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// QueueStore is the store's fleet-wide drift queue (cp/store.DB).
type QueueStore interface {
	EnqueueDrift(ctx context.Context, from string, events [][]byte) error
	TakeDrift(ctx context.Context, max int) ([][]byte, error)
}

// Queue carries the out-of-intent events reported to any instance of a
// fleet to the Detector of the one instance that leads (Drain runs
// there): the counts of a subject or task reach the threshold whichever
// instances its replicas report to, and the action is taken once.
type Queue struct {
	st       QueueStore
	instance string
	log      *slog.Logger
}

// NewQueue returns the queue of the instance named instance.
func NewQueue(st QueueStore, instance string, logger *slog.Logger) (*Queue, error) {
	if st == nil || instance == "" {
		return nil, errors.New("drift: queue needs a store and an instance name")
	}
	if logger == nil {
		logger = slog.Default()
	}
	return &Queue{st: st, instance: instance, log: logger}, nil
}

// queuedEvent is an OutOfIntent as stored in the queue.
type queuedEvent struct {
	Subject   string    `json:"s"`
	Task      string    `json:"t,omitempty"`
	Intent    string    `json:"i,omitempty"`
	MandateID string    `json:"m,omitempty"`
	Reason    string    `json:"r"`
	Time      time.Time `json:"at"`
}

// Observe implements Sink: it queues the events for the leader (no
// action is taken here, so none is returned).
func (q *Queue) Observe(ctx context.Context, events []OutOfIntent) ([]Action, error) {
	enc := make([][]byte, 0, len(events))
	for _, e := range events {
		b, err := json.Marshal(queuedEvent(e))
		if err != nil {
			return nil, fmt.Errorf("drift: queue: %w", err)
		}
		enc = append(enc, b)
	}
	for len(enc) > 0 {
		n := min(len(enc), queueBatch)
		if err := q.st.EnqueueDrift(ctx, q.instance, enc[:n]); err != nil {
			return nil, fmt.Errorf("drift: queue: %w", err)
		}
		enc = enc[n:]
	}
	return nil, nil
}

// queueBatch is how many events one store transaction moves.
const queueBatch = 500

// Drain feeds the queued events to d, polling every interval, until ctx
// ends. Run it on the fleet's leader only (fleet.Singletons): events
// queued while no instance leads wait for the next leader.
func (q *Queue) Drain(ctx context.Context, d *Detector, interval time.Duration) {
	if interval <= 0 {
		interval = 100 * time.Millisecond
	}
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for ctx.Err() == nil {
			raw, err := q.st.TakeDrift(ctx, queueBatch)
			if err != nil {
				if ctx.Err() == nil {
					q.log.Warn("drift queue not read; retrying", "error", err)
				}
				break
			}
			events := make([]OutOfIntent, 0, len(raw))
			for _, b := range raw {
				var e queuedEvent
				if err := json.Unmarshal(b, &e); err != nil {
					q.log.Warn("drift queue event unreadable; skipped", "error", err)
					continue
				}
				events = append(events, OutOfIntent(e))
			}
			if len(events) > 0 {
				if _, err := d.Observe(ctx, events); err != nil {
					q.log.Error("drift action failed", "err", err)
				}
			}
			if len(raw) < queueBatch {
				break
			}
		}
		t.Reset(interval)
	}
}
