// Package agentproto is the line protocol between a test and the testagent
// process (e2e/cmd/testagent): one JSON Command per stdin line, one JSON
// Response per stdout line.
package agentproto

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/mandate-dev/mandate/e2e/internal/proc"
)

// Operations.
const (
	OpRequest = "request" // perform one HTTP request
	OpWhoami  = "whoami"  // report the current SVID's SPIFFE ID
	OpLoad    = "load"    // send the request repeatedly (see Load); one Response with Results
)

// Load turns a request Command into steady traffic: Concurrency workers
// send it back to back (each waiting Interval between its requests) until
// StopFile exists or MaxDuration has passed, whichever comes first.
type Load struct {
	Concurrency int    `json:"concurrency,omitempty"` // default 1
	IntervalMS  int    `json:"interval_ms,omitempty"` // pause between one worker's requests
	MaxMS       int    `json:"max_ms"`                // hard bound on the run (required)
	StopFile    string `json:"stop_file,omitempty"`   // the run ends once this file exists
	// MinOwnSerials: the stop file ends the run only once the requests
	// have used this many distinct SVIDs of the agent (it rotated);
	// MaxMS still bounds the run.
	MinOwnSerials int `json:"min_own_serials,omitempty"`
}

// Result is one request of a load run.
type Result struct {
	StartNS    int64  `json:"start_ns"` // wall clock, Unix nanoseconds
	EndNS      int64  `json:"end_ns"`
	Status     int    `json:"status,omitempty"`
	Outcome    string `json:"outcome,omitempty"`     // x-frontproxy-outcome of a local reply
	DecisionID string `json:"decision_id,omitempty"` // from the deny body or the upstream's echo of x-mandate-decision-id
	Reason     string `json:"reason,omitempty"`      // deny body reason
	PeerSerial string `json:"peer_serial,omitempty"` // the proxy's certificate on this connection
	OwnSerial  string `json:"own_serial,omitempty"`  // the agent's current SVID
	Error      string `json:"error,omitempty"`
}

// Command is one instruction to the agent.
type Command struct {
	ID      string            `json:"id,omitempty"`
	Op      string            `json:"op"`
	Method  string            `json:"method,omitempty"`
	Path    string            `json:"path,omitempty"`    // request-target, sent as is
	Headers map[string]string `json:"headers,omitempty"` // set on the request
	Mandate string            `json:"mandate,omitempty"` // sent in x-mandate
	Body    string            `json:"body,omitempty"`
	Plain   bool              `json:"plain,omitempty"`    // use the plaintext proxy listener (no mTLS)
	NewConn bool              `json:"new_conn,omitempty"` // drop idle connections first (forces a new handshake)
	Load    *Load             `json:"load,omitempty"`     // OpLoad only
}

// Response is the agent's answer to one Command.
type Response struct {
	ID       string              `json:"id,omitempty"`
	Status   int                 `json:"status,omitempty"`
	Headers  map[string][]string `json:"headers,omitempty"`
	Body     string              `json:"body,omitempty"`
	SPIFFEID string              `json:"spiffe_id,omitempty"` // whoami, and the identity used for a request
	Error    string              `json:"error,omitempty"`
	// PeerSerial and OwnSerial: hex serial numbers of the proxy's
	// certificate on the connection used and of the agent's SVID.
	PeerSerial string   `json:"peer_serial,omitempty"`
	OwnSerial  string   `json:"own_serial,omitempty"`
	Results    []Result `json:"results,omitempty"` // OpLoad
}

// Session drives a testagent started in serve mode.
type Session struct {
	p      *proc.Process
	mu     sync.Mutex
	lines  chan []byte
	closed chan struct{}
	once   sync.Once
}

// Start runs binary (a testagent) with args plus "-mode serve", the extra
// environment env (e.g. SPIFFE_ENDPOINT_SOCKET) and returns a Session. The
// process is stopped when t ends.
func Start(t testing.TB, name, binary string, env []string, args ...string) (*Session, error) {
	t.Helper()
	p, err := proc.Start(t, proc.Spec{
		Name: name, Path: binary, Args: append(append([]string{}, args...), "-mode", "serve"),
		Env: env, Pipes: true,
	})
	if err != nil {
		return nil, fmt.Errorf("agentproto: %w", err)
	}
	s := &Session{p: p, lines: make(chan []byte), closed: make(chan struct{})}
	go func() {
		defer close(s.lines)
		sc := bufio.NewScanner(p.Stdout())
		sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
		for sc.Scan() {
			select {
			case s.lines <- append([]byte(nil), sc.Bytes()...):
			case <-s.closed:
				return
			}
		}
	}()
	t.Cleanup(func() { _ = s.Close() })
	return s, nil
}

// Process returns the agent process.
func (s *Session) Process() *proc.Process { return s.p }

// Do sends cmd and waits (bounded by ctx) for its response. A transport
// problem is the returned error; a failed HTTP request is Response.Error.
func (s *Session) Do(ctx context.Context, cmd Command) (Response, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := json.Marshal(cmd)
	if err != nil {
		return Response{}, fmt.Errorf("agentproto: %w", err)
	}
	if _, err := s.p.Stdin().Write(append(b, '\n')); err != nil {
		return Response{}, fmt.Errorf("agentproto: write to %s: %w", s.p.Name(), err)
	}
	select {
	case <-ctx.Done():
		return Response{}, fmt.Errorf("agentproto: waiting for %s: %w", s.p.Name(), ctx.Err())
	case line, ok := <-s.lines:
		if !ok {
			return Response{}, errors.New("agentproto: " + s.p.Name() + " closed its output")
		}
		var r Response
		if err := json.Unmarshal(line, &r); err != nil {
			return Response{}, fmt.Errorf("agentproto: bad line from %s: %q: %w", s.p.Name(), line, err)
		}
		if cmd.ID != "" && r.ID != cmd.ID {
			return r, fmt.Errorf("agentproto: response id %q for command %q", r.ID, cmd.ID)
		}
		return r, nil
	}
}

// Close ends the session: closes stdin (the agent exits) and stops the process.
func (s *Session) Close() error {
	s.once.Do(func() {
		close(s.closed)
		s.p.Stdin().Close()
	})
	return s.p.Stop()
}
