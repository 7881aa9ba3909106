package main

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	mrand "math/rand"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/mandate-dev/mandate/authz/mandate"
	"github.com/mandate-dev/mandate/internal/envoyreq"
)

// A workload produces the serialized CheckRequest of each call. next is
// called concurrently by ghz's workers.
type workload interface {
	next() []byte
}

const (
	benchHost   = "tickets.internal"
	benchIntent = "support.read"
)

// marshal returns the CheckRequest of p, length-delimited: ghz's binary
// data parser first tries to read its input as a sequence of
// length-delimited messages, and a bare CheckRequest (which starts with a
// tag byte that also reads as a small length) sometimes parses that way
// into garbage. A length prefix makes the parse exact.
func marshal(p envoyreq.Params) []byte {
	b, err := proto.Marshal(envoyreq.Build(p))
	if err != nil {
		// A CheckRequest built from strings always marshals.
		panic(fmt.Sprintf("bench: marshal CheckRequest: %v", err))
	}
	return append(protowire.AppendVarint(make([]byte, 0, len(b)+3), uint64(len(b))), b...)
}

// fixedWorkload sends the same request every time: scenario 1 and the
// baseline.
type fixedWorkload struct{ b []byte }

func newFixedWorkload() *fixedWorkload {
	return &fixedWorkload{b: marshal(envoyreq.Params{
		Principal: "spiffe://example.org/agent/a7", Method: "GET", Path: "/tickets/1", Host: benchHost,
		Headers: [][2]string{{"x-mandate-intent", benchIntent}, {"x-mandate-task", "T"}, {"x-ticket", "T-1"}},
	})}
}

func (w *fixedWorkload) next() []byte { return w.b }

// mcpBody is a tools/call of about 4 KiB (a long query argument), for
// repository repo.
func mcpBody(id int64, repo string) string {
	return `{"jsonrpc":"2.0","id":` + strconv.FormatInt(id, 10) + `,"method":"tools/call","params":{"name":"github.list_issues","arguments":{"owner":"acme","repo":"` +
		repo + `","state":"open","labels":["bug","p1"],"query":"` + strings.Repeat("frobnicator overflow when the widget count wraps; ", 78) + `"}}}`
}

func mcpParams(body string) envoyreq.Params {
	return envoyreq.Params{
		Principal: "spiffe://example.org/coder/c1", Method: "POST", Path: "/mcp", Host: benchHost, Body: body, RawBody: true,
		Headers:           [][2]string{{"content-type", "application/json"}, {"mcp-method", "tools/call"}, {"mcp-name", "github.list_issues"}},
		ContextExtensions: map[string]string{"protocol": "mcp"},
	}
}

// mcpWorkload sends 4 KiB MCP tool calls: the same one (distinct false:
// cache hits after the first) or each for another repository, which the
// policy's condition reads (distinct: every call a miss).
type mcpWorkload struct {
	fixed    []byte
	distinct bool
	n        atomic.Int64
}

func newMCPWorkload(distinct bool) *mcpWorkload {
	return &mcpWorkload{fixed: marshal(mcpParams(mcpBody(1, "widgets"))), distinct: distinct}
}

func (w *mcpWorkload) next() []byte {
	if !w.distinct {
		return w.fixed
	}
	n := w.n.Add(1)
	return marshal(mcpParams(mcpBody(n, "repo-"+strconv.FormatInt(n, 10))))
}

// distinctWorkload never repeats a request: the path and the header the
// CEL condition reads carry a counter, and the caller cycles through the
// rules' subjects (scenario 2).
type distinctWorkload struct {
	rules int
	n     atomic.Int64
}

func (w *distinctWorkload) next() []byte {
	n := w.n.Add(1)
	t := strconv.FormatInt(n, 10)
	return marshal(envoyreq.Params{
		Principal: "spiffe://example.org/agent/a" + strconv.FormatInt(n%int64(w.rules), 10),
		Method:    "GET", Path: "/tickets/" + t, Host: benchHost,
		Headers: [][2]string{{"x-mandate-intent", benchIntent}, {"x-mandate-task", "T"}, {"x-ticket", "T-" + t}},
	})
}

// tokenWorkload sends a mandate never seen before with every request
// (scenario 4), from a pool signed before the run. When the pool runs out
// it starts over and counts the reuses, which the report states.
type tokenWorkload struct {
	reqs   [][]byte
	n      atomic.Int64
	reused atomic.Int64
}

// newTokenWorkload signs count mandates, each for its own subject (the
// caller presents it over its mTLS identity) and task, with key priv. It
// signs on every CPU.
func newTokenWorkload(kid string, priv []byte, count int) (*tokenWorkload, error) {
	signer, err := mandate.NewSigner(kid, priv, mandateIssuer)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	now := time.Now().Unix()
	w := &tokenWorkload{reqs: make([][]byte, count)}
	var wg sync.WaitGroup
	var firstErr atomic.Value
	workers := runtime.NumCPU()
	for g := 0; g < workers; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := g; i < count; i += workers {
				subject := "spiffe://example.org/mandated/m" + strconv.Itoa(i%1000)
				task := "T-" + strconv.Itoa(i)
				tok, err := signer.Sign(&mandate.Claims{
					Subject: subject, Audience: mandateAudience, Task: task, Intent: benchIntent,
					Scope:    mandate.Scope{Methods: []string{"GET"}, Paths: []string{"/tickets/**"}},
					IssuedAt: now, NotBefore: now, Expiry: now + 600,
				})
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				w.reqs[i] = marshal(envoyreq.Params{
					Principal: subject, Method: "GET", Path: "/tickets/" + task, Host: benchHost,
					Headers: [][2]string{{"x-mandate", tok}},
				})
			}
		}(g)
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return nil, fmt.Errorf("bench: signing mandates: %w", err)
	}
	return w, nil
}

func (w *tokenWorkload) next() []byte {
	n := w.n.Add(1) - 1
	if n >= int64(len(w.reqs)) {
		w.reused.Add(1)
	}
	return w.reqs[n%int64(len(w.reqs))]
}

// zipfWorkload picks the caller among identities SPIFFE IDs with a Zipf
// distribution (scenario 5): a few agents make most calls, a long tail
// calls rarely. The sequence is drawn before the run, seeded, so runs are
// comparable.
type zipfWorkload struct {
	seq []int32
	n   atomic.Int64
}

func newZipfWorkload(identities, length int, s float64, seed int64) (*zipfWorkload, error) {
	if identities < 2 || length < 1 || s <= 1 {
		return nil, fmt.Errorf("bench: zipf: need identities >= 2, length >= 1, s > 1")
	}
	z := mrand.NewZipf(mrand.New(mrand.NewSource(seed)), s, 1, uint64(identities-1))
	w := &zipfWorkload{seq: make([]int32, length)}
	for i := range w.seq {
		w.seq[i] = int32(z.Uint64())
	}
	return w, nil
}

func (w *zipfWorkload) next() []byte {
	n := w.n.Add(1) - 1
	id := w.seq[n%int64(len(w.seq))]
	return marshal(envoyreq.Params{
		Principal: "spiffe://example.org/fleet/agent-" + strconv.Itoa(int(id)),
		Method:    "GET", Path: "/tickets/1", Host: benchHost,
		Headers: [][2]string{{"x-mandate-intent", benchIntent}, {"x-mandate-task", "T"}, {"x-ticket", "T-1"}},
	})
}

const (
	mandateIssuer   = "spiffe://example.org/mandate/cp"
	mandateAudience = "mandate"
)

// policyYAML returns a policy set with rules rules like authz's
// BenchmarkCheck (each for its own agent subject, with a CEL condition
// reading a header and the task), plus a rule for the fleet of scenario 5,
// one for mandated callers (scenario 4) and a deny.
func policyYAML(rules int) string {
	var b strings.Builder
	b.WriteString("apiVersion: mandate.dev/v1\nkind: Policy\nmetadata: {name: bench}\nspec:\n  rules:\n")
	for i := 0; i < rules; i++ {
		fmt.Fprintf(&b, `    - name: r%d
      effect: allow
      subjects: ["spiffe://example.org/agent/a%d"]
      intents: [support.read]
      actions: [{methods: [GET], paths: ["/tickets/**"]}]
      when: 'request.headers["x-ticket"].startsWith(task)'
`, i, i)
	}
	b.WriteString(`    - name: fleet
      effect: allow
      subjects: ["spiffe://example.org/fleet/*"]
      intents: [support.read]
      actions: [{methods: [GET], paths: ["/tickets/**"]}]
      when: 'request.headers["x-ticket"].startsWith(task)'
    - name: mandated
      effect: allow
      subjects: ["spiffe://example.org/mandated/*"]
      requireMandate: true
      intents: [support.read]
      actions: [{methods: [GET], paths: ["/tickets/**"]}]
      when: 'request.path.endsWith(task)'
    - name: no-secrets
      effect: deny
      subjects: ["spiffe://example.org/**"]
      actions: [{paths: ["/secrets/**"]}]
    - name: coder-read-tools
      effect: allow
      subjects: ["spiffe://example.org/coder/*"]
      labels: {protocol: mcp}
      actions: [{mcp: {tools: ["github.list_*", "github.get_*"]}}]
    - name: coder-own-org
      effect: deny
      subjects: ["spiffe://example.org/coder/*"]
      actions: [{mcp: {tools: ["github.*"]}}]
      when: 'mcp.arguments.owner != "acme" || mcp.arguments.repo == "secrets"'
`)
	return b.String()
}

// writePolicyDir writes policyYAML(rules) into a new directory under dir.
func writePolicyDir(dir string, rules int) (string, error) {
	p := filepath.Join(dir, fmt.Sprintf("policies-%d", rules))
	if err := os.MkdirAll(p, 0o755); err != nil {
		return "", fmt.Errorf("bench: %w", err)
	}
	if err := os.WriteFile(filepath.Join(p, "bench.yaml"), []byte(policyYAML(rules)), 0o644); err != nil {
		return "", fmt.Errorf("bench: %w", err)
	}
	return p, nil
}

// mandateKeys generates a signing key and writes the verification key file
// mandate-authz's --mandate-keys reads.
func mandateKeys(dir string) (path, kid string, priv []byte, err error) {
	kid, pub, priv, err := mandate.GenerateKey(rand.Reader)
	if err != nil {
		return "", "", nil, fmt.Errorf("bench: %w", err)
	}
	b, err := json.Marshal([]map[string]any{{"kid": kid, "public_key": []byte(pub)}})
	if err != nil {
		return "", "", nil, fmt.Errorf("bench: %w", err)
	}
	path = filepath.Join(dir, "mandate-keys.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return "", "", nil, fmt.Errorf("bench: %w", err)
	}
	return path, kid, priv, nil
}
