package decisionlog

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func TestRecordsAreJSON(t *testing.T) {
	var buf syncBuf
	l, err := New(context.Background(), Config{Out: slog.New(slog.NewJSONHandler(&buf, nil))})
	if err != nil {
		t.Fatal(err)
	}
	l.Log(Record{DecisionID: "d1", Subject: "spiffe://example.org/a", Result: "allow", Rule: "r1",
		Chain: []string{"spiffe://example.org/p"}, CacheHit: true, Latency: 1500 * time.Nanosecond})
	l.Log(Record{DecisionID: "d2", Result: "deny", Reason: "no_matching_rule"})
	l.Close()

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2: %q", len(lines), buf.String())
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"decision_id": "d1", "subject": "spiffe://example.org/a", "result": "allow",
		"rule": "r1", "cache_hit": true, "latency_ns": float64(1500)} {
		if rec[k] != want {
			t.Errorf("%s = %v, want %v", k, rec[k], want)
		}
	}
	if l.Written() != 2 || l.Dropped() != 0 {
		t.Fatalf("written %d dropped %d", l.Written(), l.Dropped())
	}
}

// blockingWriter holds every write until released, so the queue fills.
type blockingWriter struct{ release chan struct{} }

func (b *blockingWriter) Write(p []byte) (int, error) { <-b.release; return len(p), nil }

func TestFullQueueDropsAndCounts(t *testing.T) {
	w := &blockingWriter{release: make(chan struct{})}
	var drops int
	l, err := New(context.Background(), Config{
		Out:       slog.New(slog.NewJSONHandler(w, nil)),
		QueueSize: 2,
		OnDrop:    func() { drops++ },
	})
	if err != nil {
		t.Fatal(err)
	}
	// One record may be taken by the writer goroutine; at most 2 more fit.
	for i := 0; i < 10; i++ {
		l.Log(Record{DecisionID: "x"})
	}
	if l.Dropped() < 7 || uint64(drops) != l.Dropped() {
		t.Fatalf("dropped %d (callback %d), want >= 7", l.Dropped(), drops)
	}
	close(w.release)
	l.Close()
	if got := l.Written() + l.Dropped(); got != 10 {
		t.Fatalf("written+dropped = %d, want 10 (a record was lost uncounted)", got)
	}
}

func TestNilLogger(t *testing.T) {
	var l *Logger
	l.Log(Record{})
	if _, err := New(context.Background(), Config{}); err == nil {
		t.Fatal("New accepted a nil Out")
	}
}

// A Check still running while the server shuts down may log after Close:
// that must be dropped and counted, never a panic (send on closed channel).
func TestLogAfterCloseDrops(t *testing.T) {
	var buf syncBuf
	var drops int
	l, err := New(context.Background(), Config{Out: slog.New(slog.NewJSONHandler(&buf, nil)), OnDrop: func() { drops++ }})
	if err != nil {
		t.Fatal(err)
	}
	l.Log(Record{DecisionID: "before"})
	l.Close()
	l.Close() // idempotent
	l.Log(Record{DecisionID: "after"})
	if l.Written() != 1 || l.Dropped() != 1 || drops != 1 {
		t.Fatalf("written %d dropped %d (callback %d), want 1 and 1", l.Written(), l.Dropped(), drops)
	}
	if strings.Contains(buf.String(), "after") {
		t.Fatalf("a record logged after Close was written: %q", buf.String())
	}
}

func TestMCPRecord(t *testing.T) {
	ctx := context.Background()
	for _, withArgs := range []bool{false, true} {
		var buf syncBuf
		l, err := New(ctx, Config{Out: slog.New(slog.NewJSONHandler(&buf, nil)), MCPArguments: withArgs, Redact: []string{"token"}})
		if err != nil {
			t.Fatal(err)
		}
		l.Log(Record{DecisionID: "d1", MCPMethod: "tools/call", MCPTool: "github.get_file", MCPRequestID: "7",
			MCPArguments: `{"owner":"acme","auth":{"Token":"s3cret"},"list":[{"token":"x"},1]}`})
		l.Close()
		var out struct {
			MCP struct {
				Method    string   `json:"method"`
				Tool      string   `json:"tool"`
				ID        string   `json:"request_id"`
				Keys      []string `json:"argument_keys"`
				Hash      string   `json:"arguments_sha256"`
				Arguments *string  `json:"arguments"`
			} `json:"mcp"`
		}
		if err := json.Unmarshal([]byte(buf.String()), &out); err != nil {
			t.Fatalf("%s: %v", buf.String(), err)
		}
		m := out.MCP
		if m.Method != "tools/call" || m.Tool != "github.get_file" || m.ID != "7" || strings.Join(m.Keys, ",") != "owner,auth,list" || len(m.Hash) != 64 {
			t.Fatalf("record %s", buf.String())
		}
		if strings.Contains(buf.String(), "s3cret") {
			t.Fatalf("argument value written: %s", buf.String())
		}
		switch {
		case !withArgs && m.Arguments != nil:
			t.Fatalf("arguments written without opt-in: %s", buf.String())
		case withArgs && (m.Arguments == nil || *m.Arguments != `{"owner":"acme","auth":{"Token":"[redacted]"},"list":[{"token":"[redacted]"},1]}`):
			t.Fatalf("arguments %v", m.Arguments)
		}
	}
}
