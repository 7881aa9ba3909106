package authz

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mandate-dev/mandate/authz/decisionlog"
	"github.com/mandate-dev/mandate/internal/testcert"
)

// benchPolicies returns n rules, each for its own agent subject, with a
// CEL condition reading a header and the task.
func benchPolicies(n int) string {
	var b strings.Builder
	b.WriteString("apiVersion: mandate.dev/v1\nkind: Policy\nmetadata: {name: bench}\nspec:\n  rules:\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, `    - name: r%d
      effect: allow
      subjects: ["spiffe://example.org/agent/a%d"]
      intents: [support.read]
      actions: [{methods: [GET], paths: ["/tickets/**"]}]
      when: 'request.headers["x-ticket"].startsWith(task)'
`, i, i)
	}
	b.WriteString(`    - name: no-secrets
      effect: deny
      subjects: ["spiffe://example.org/**"]
      actions: [{paths: ["/secrets/**"]}]
`)
	return b.String()
}

// BenchmarkCheckWithDecisionLog is a cache hit with the decision log on
// (JSON to io.Discard on its own goroutine), as users run it.
func BenchmarkCheckWithDecisionLog(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l, err := decisionlog.New(ctx, decisionlog.Config{Out: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	h := newHarness(b, func(c *Config) { c.Log = l })
	req := checkReq("GET", "/queue")
	if res := h.check(b, req); !res.allowed {
		b.Fatalf("denied: %+v", res)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := h.srv.Check(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	l.Close()
	b.ReportMetric(float64(l.Dropped())/float64(b.N), "dropped/op")
}

func benchHarness(b *testing.B, rules int, mutate ...func(*Config)) *harness {
	// No decision log: this measures the handler alone.
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	h := newHarness(b, func(c *Config) {
		c.Log, c.Metrics = nil, m
		for _, f := range mutate {
			f(c)
		}
	})
	set := compile(b, benchPolicies(rules))
	h.store.Update(func(s *State) { s.Policies = set })
	return h
}

// BenchmarkCheck measures the Check handler in process: a cache hit, and a
// miss (every request distinct, CEL condition evaluated), at 10 and 10,000
// rules.
func BenchmarkCheck(b *testing.B) {
	ctx := context.Background()
	for _, rules := range []int{10, 10_000} {
		b.Run(fmt.Sprintf("hit/rules=%d", rules), func(b *testing.B) {
			h := benchHarness(b, rules)
			req := checkReq("GET", "/tickets/1", principal("spiffe://example.org/agent/a7"),
				hdr("x-mandate-intent", "support.read"), hdr("x-mandate-task", "T"), hdr("x-ticket", "T-1"))
			if res := h.check(b, req); !res.allowed {
				b.Fatalf("bench request denied: %+v", res)
			}
			b.ReportAllocs()
			b.ResetTimer()
			cpu := processCPU()
			for i := 0; i < b.N; i++ {
				if _, err := h.srv.Check(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			reportCPU(b, cpu)
			hits, _, _ := h.cache.Stats()
			if hits < uint64(b.N)/2 {
				b.Fatalf("only %d cache hits in %d iterations", hits, b.N)
			}
		})
		b.Run(fmt.Sprintf("hit-with-peer-cert/rules=%d", rules), func(b *testing.B) {
			// Envoy with include_peer_certificate: the certificate is
			// checked on every request (its verdict cached by digest).
			h := benchHarness(b, rules, func(c *Config) { c.RequirePeerCertificate = true })
			const id = "spiffe://example.org/agent/a7"
			cert := testcert.LeafPEM(b, id)
			req := checkReq("GET", "/tickets/1", principal(id), func(r *authv3.CheckRequest) { r.Attributes.Source.Certificate = cert },
				hdr("x-mandate-intent", "support.read"), hdr("x-mandate-task", "T"), hdr("x-ticket", "T-1"))
			if res := h.check(b, req); !res.allowed {
				b.Fatalf("bench request denied: %+v", res)
			}
			b.ReportAllocs()
			b.ResetTimer()
			cpu := processCPU()
			for i := 0; i < b.N; i++ {
				if _, err := h.srv.Check(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			reportCPU(b, cpu)
		})
		b.Run(fmt.Sprintf("miss/rules=%d", rules), func(b *testing.B) {
			h := benchHarness(b, rules)
			// Every request is distinct (path and the header the condition
			// reads), so each one evaluates policies and CEL. Requests are
			// prepared up front; moving the clock past the cache TTL every
			// len(reqs) iterations keeps repeats from hitting the cache.
			reqs := make([]*authv3.CheckRequest, 1<<14)
			for i := range reqs {
				t := strconv.Itoa(i)
				reqs[i] = checkReq("GET", "/tickets/"+t, principal("spiffe://example.org/agent/a"+strconv.Itoa(i%rules)),
					hdr("x-mandate-intent", "support.read"), hdr("x-mandate-task", "T"), hdr("x-ticket", "T-"+t))
			}
			if res := h.check(b, reqs[1]); !res.allowed {
				b.Fatalf("bench request denied: %+v", res)
			}
			b.ReportAllocs()
			b.ResetTimer()
			cpu := processCPU()
			for i := 0; i < b.N; i++ {
				if i%len(reqs) == 0 {
					h.clock.Add(2 * time.Minute)
				}
				if _, err := h.srv.Check(ctx, reqs[i%len(reqs)]); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			reportCPU(b, cpu)
			if hits := testutil.ToFloat64(h.srv.cfg.Metrics.cacheHits); hits > 0 {
				b.Fatalf("%v cache hits in a benchmark of misses", hits)
			}
		})
	}
}

// mcpBody4K is a tools/call of about 4 KiB: a pull-request body in the
// arguments, the kind of payload agents send.
func mcpBody4K(id int, repo string) string {
	return `{"jsonrpc":"2.0","id":` + strconv.Itoa(id) + `,"method":"tools/call","params":{"name":"github.list_issues","arguments":{"owner":"acme","repo":"` + repo +
		`","state":"open","labels":["bug","p1"],"query":"` + strings.Repeat("frobnicator overflow when the widget count wraps; ", 78) + `"}}}`
}

// reportCPU adds the process CPU time per iteration since start
// ("cpu-ns/op"): what an iteration cost, where ns/op also counts the time
// the shared machine ran other work.
func reportCPU(b *testing.B, start time.Duration) {
	if start > 0 {
		b.ReportMetric(float64(processCPU()-start)/float64(b.N), "cpu-ns/op")
	}
}

// asRawBody moves the body to raw_body, as Envoy sends it with
// with_request_body.pack_as_bytes (which MCP routes require).
func asRawBody(r *authv3.CheckRequest) {
	h := r.Attributes.Request.Http
	h.RawBody, h.Body = []byte(h.Body), ""
}

// BenchmarkCheckMCP measures a decision on a 4 KiB tools/call (strict
// parse, header agreement, policy with an argument condition) sent as
// raw_body, as Envoy sends it: a cache hit, and a miss (each request
// another repo, which a condition reads, so each is evaluated), and for
// comparison a plain HTTP request through the same server (a hit).
func BenchmarkCheckMCP(b *testing.B) {
	ctx := context.Background()
	b.Run("http/hit", func(b *testing.B) {
		h := benchHarness(b, 10)
		req := checkReq("GET", "/tickets/1", principal("spiffe://example.org/agent/a7"),
			hdr("x-mandate-intent", "support.read"), hdr("x-mandate-task", "T"), hdr("x-ticket", "T-1"))
		if res := h.check(b, req); !res.allowed {
			b.Fatalf("denied: %+v", res)
		}
		b.ReportAllocs()
		b.ResetTimer()
		cpu := processCPU()
		for i := 0; i < b.N; i++ {
			if _, err := h.srv.Check(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
		reportCPU(b, cpu)
	})
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	h := mcpHarness(b, func(c *Config) { c.Log, c.Metrics = nil, m })
	b.Run("hit", func(b *testing.B) {
		req := mcpReq(mcpBody4K(1, "widgets"), hdr("mcp-method", "tools/call"), hdr("mcp-name", "github.list_issues"))
		asRawBody(req)
		if res := h.checkMCP(b, req); !res.allowed {
			b.Fatalf("denied: %s", res.body)
		}
		b.SetBytes(int64(len(req.Attributes.Request.Http.RawBody)))
		b.ReportAllocs()
		b.ResetTimer()
		cpu := processCPU()
		for i := 0; i < b.N; i++ {
			if _, err := h.srv.Check(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
		reportCPU(b, cpu)
	})
	b.Run("hit-new-ids", func(b *testing.B) {
		// As MCP clients send them: the same call under a new JSON-RPC
		// id each time (the id is no decision input).
		reqs := make([]*authv3.CheckRequest, 1<<12)
		for i := range reqs {
			reqs[i] = mcpReq(mcpBody4K(i, "widgets"), hdr("mcp-method", "tools/call"), hdr("mcp-name", "github.list_issues"))
			asRawBody(reqs[i])
		}
		for _, r := range reqs[:2] {
			if res := h.checkMCP(b, r); !res.allowed {
				b.Fatalf("denied: %s", res.body)
			}
		}
		b.SetBytes(int64(len(reqs[0].Attributes.Request.Http.RawBody)))
		b.ReportAllocs()
		b.ResetTimer()
		cpu := processCPU()
		for i := 0; i < b.N; i++ {
			if _, err := h.srv.Check(ctx, reqs[i%len(reqs)]); err != nil {
				b.Fatal(err)
			}
		}
		reportCPU(b, cpu)
	})
	b.Run("miss", func(b *testing.B) {
		reqs := make([]*authv3.CheckRequest, 1<<12)
		for i := range reqs {
			reqs[i] = mcpReq(mcpBody4K(i, "repo-"+strconv.Itoa(i)), hdr("mcp-method", "tools/call"), hdr("mcp-name", "github.list_issues"))
			asRawBody(reqs[i])
		}
		if res := h.checkMCP(b, reqs[1]); !res.allowed {
			b.Fatalf("denied: %s", res.body)
		}
		before := testutil.ToFloat64(m.cacheHits)
		b.SetBytes(int64(len(reqs[0].Attributes.Request.Http.RawBody)))
		b.ReportAllocs()
		b.ResetTimer()
		cpu := processCPU()
		for i := 0; i < b.N; i++ {
			if i%len(reqs) == 0 {
				h.clock.Add(2 * time.Minute)
			}
			if _, err := h.srv.Check(ctx, reqs[i%len(reqs)]); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		reportCPU(b, cpu)
		if hits := testutil.ToFloat64(m.cacheHits) - before; hits > 0 {
			b.Fatalf("%v cache hits in a benchmark of misses", hits)
		}
	})
}
