package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
)

// samples is one scrape of a Prometheus text exposition: series (name plus
// label text, as printed) to value.
type samples map[string]float64

// parseText parses the Prometheus text format (version 0.0.4) as
// client_golang writes it: one "name{labels} value" per line, no
// timestamps. Comments and blank lines are skipped.
func parseText(r io.Reader) (samples, error) {
	out := samples{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i <= 0 {
			return nil, fmt.Errorf("bench: metrics: malformed line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("bench: metrics: line %q: %w", line, err)
		}
		out[strings.TrimSpace(line[:i])] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("bench: metrics: %w", err)
	}
	return out, nil
}

// scrape fetches addr's /metrics.
func scrape(ctx context.Context, addr string) (samples, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, fmt.Errorf("bench: metrics: %w", err)
	}
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("bench: metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("bench: metrics: %s: %s", addr, resp.Status)
	}
	return parseText(resp.Body)
}

// sum adds every series named name whose labels contain each of the given
// label="value" pairs.
func (s samples) sum(name string, labels ...string) float64 {
	var t float64
	for k, v := range s {
		n, rest, _ := strings.Cut(k, "{")
		if n != name {
			continue
		}
		match := true
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				match = false
				break
			}
		}
		if match {
			t += v
		}
	}
	return t
}

// bucket is one cumulative histogram bucket.
type bucket struct {
	le    float64
	count float64
}

// histogramDelta returns the cumulative buckets of histogram name in after
// minus before, sorted by upper bound (+Inf last).
func histogramDelta(before, after samples, name string) []bucket {
	var bs []bucket
	prefix := name + "_bucket{"
	for k, v := range after {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		_, rest, _ := strings.Cut(k, `le="`)
		leText, _, _ := strings.Cut(rest, `"`)
		le, err := strconv.ParseFloat(leText, 64)
		if err != nil {
			continue
		}
		bs = append(bs, bucket{le: le, count: v - before[k]})
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].le < bs[j].le })
	return bs
}

// quantile estimates quantile q (0..1) of cumulative buckets by linear
// interpolation inside the bucket the rank falls in, as Prometheus's
// histogram_quantile does. The first bucket interpolates from 0; a rank in
// the +Inf bucket returns the largest finite bound. It returns NaN without
// observations.
func quantile(q float64, bs []bucket) float64 {
	if len(bs) == 0 {
		return math.NaN()
	}
	total := bs[len(bs)-1].count
	if total <= 0 {
		return math.NaN()
	}
	rank := q * total
	lowerBound, lowerCount := 0.0, 0.0
	for i, b := range bs {
		if b.count >= rank {
			if math.IsInf(b.le, 1) {
				if i == 0 {
					return math.NaN()
				}
				return bs[i-1].le
			}
			if b.count == lowerCount {
				return b.le
			}
			return lowerBound + (b.le-lowerBound)*(rank-lowerCount)/(b.count-lowerCount)
		}
		lowerBound, lowerCount = b.le, b.count
	}
	return bs[len(bs)-1].le
}
