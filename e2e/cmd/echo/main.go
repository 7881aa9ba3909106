// Command echo is the end-to-end suite's upstream service: it answers every
// request with a JSON description of what it received and remembers the
// requests, so tests can assert what reached the upstream (GET /_seen lists
// them, DELETE /_seen forgets them). /_seen is meant for the test itself,
// addressed directly, not through the front proxy.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Seen is one request as the upstream received it.
type Seen struct {
	Method     string              `json:"method"`
	RequestURI string              `json:"request_uri"`
	Host       string              `json:"host"`
	Headers    map[string][]string `json:"headers"`
	Body       string              `json:"body,omitempty"`
}

type recorder struct {
	mu   sync.Mutex
	max  int
	seen []Seen
	// mcp serves /mcp: a real MCP server (Streamable HTTP) whose tools
	// answer with their name and arguments.
	mcp http.Handler
}

func newRecorder(max int) *recorder { return &recorder{max: max, mcp: newMCPHandler()} }

func (rec *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/_seen" {
		rec.serveSeen(w, r)
		return
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	s := Seen{Method: r.Method, RequestURI: r.RequestURI, Host: r.Host, Headers: r.Header, Body: string(body)}
	rec.mu.Lock()
	rec.seen = append(rec.seen, s)
	if len(rec.seen) > rec.max {
		rec.seen = rec.seen[len(rec.seen)-rec.max:]
	}
	rec.mu.Unlock()
	if r.URL.Path == "/mcp" {
		r.Body = io.NopCloser(bytes.NewReader(body))
		rec.mcp.ServeHTTP(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(s)
}

func (rec *recorder) serveSeen(w http.ResponseWriter, r *http.Request) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	switch r.Method {
	case http.MethodGet:
		w.Header().Set("Content-Type", "application/json")
		out := rec.seen
		if out == nil {
			out = []Seen{}
		}
		_ = json.NewEncoder(w).Encode(out)
	case http.MethodDelete:
		rec.seen = nil
		w.WriteHeader(http.StatusNoContent)
	default:
		w.WriteHeader(http.StatusMethodNotAllowed)
	}
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
}

func run() error {
	listen := flag.String("listen", "127.0.0.1:0", "listen address")
	addrFile := flag.String("addr-file", "", "write the bound address to this file once listening")
	keep := flag.Int("keep", 10000, "how many requests /_seen remembers")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if *addrFile != "" {
		if err := writeFileAtomic(*addrFile, []byte(ln.Addr().String())); err != nil {
			return err
		}
	}
	log.Info("echo listening", "addr", ln.Addr().String())
	srv := &http.Server{Handler: newRecorder(*keep), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// writeFileAtomic writes via a temporary file and a rename, so a reader
// polling for path never sees a partial content.
func writeFileAtomic(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return fmt.Errorf("addr file: %w", err)
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("addr file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("addr file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("addr file: %w", err)
	}
	return nil
}
