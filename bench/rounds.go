package main

import (
	"fmt"
	"slices"
	"strings"
)

// medianOfRounds merges the results of several rounds of the same
// scenarios into one result per scenario. Each round ran its own
// baselines just before its scenarios, so a round's ratios compare runs
// minutes apart at most; the merged ratio of a figure is the median of
// the rounds' ratios (not the ratio of medians), and the merged absolute
// figures are the medians of the rounds'. On a shared machine whose
// speed drifts between scenarios, that is what a ratio can claim. Goals
// are judged on the merged ratios.
func medianOfRounds(scs []scenario, rounds [][]*result) []*result {
	if len(rounds) == 1 {
		return rounds[0]
	}
	var merged []*result
	for _, last := range rounds[len(rounds)-1] {
		var same []*result
		for _, round := range rounds {
			for _, r := range round {
				if r.ID == last.ID && r.Error == "" && r.Skipped == "" {
					same = append(same, r)
				}
			}
		}
		// The template is the last round that ran the scenario without
		// an error: a failed last round does not hide earlier results.
		tmpl := last
		if len(same) > 0 {
			tmpl = same[len(same)-1]
		}
		m := *tmpl
		m.Notes = slices.Clone(tmpl.Notes)
		if len(same) > 0 {
			m.RPS = median(same, func(r *result) (float64, bool) { return r.RPS, true })
			m.P50us = median(same, func(r *result) (float64, bool) { return r.P50us, true })
			m.P99us = median(same, func(r *result) (float64, bool) { return r.P99us, true })
			m.P999us = median(same, func(r *result) (float64, bool) { return r.P999us, true })
			m.CPUPerReqUS = median(same, func(r *result) (float64, bool) { return r.CPUPerReqUS, true })
			m.AllocsPerReq = median(same, func(r *result) (float64, bool) { return r.AllocsPerReq, true })
		}
		if tmpl.Ratio != nil {
			m.Ratio = map[string]float64{}
			for k := range tmpl.Ratio {
				m.Ratio[k] = median(same, func(r *result) (float64, bool) { v, ok := r.Ratio[k]; return v, ok })
			}
			var per []string
			for _, r := range same {
				if v, ok := r.Ratio["rps"]; ok {
					per = append(per, fmt.Sprintf("%.2fx", v))
				}
			}
			m.Notes = append(m.Notes, fmt.Sprintf("median of %d rounds; throughput ratio per round: %s", len(same), strings.Join(per, ", ")))
		} else {
			m.Notes = append(m.Notes, fmt.Sprintf("median of %d rounds", len(same)))
		}
		merged = append(merged, &m)
	}
	evaluateGoals(scs, merged)
	return merged
}

// median is the median of what get returns for the results it returns
// a value for (the mean of the middle two for an even count); 0 for
// none.
func median(rs []*result, get func(*result) (float64, bool)) float64 {
	var vs []float64
	for _, r := range rs {
		if v, ok := get(r); ok {
			vs = append(vs, v)
		}
	}
	if len(vs) == 0 {
		return 0
	}
	slices.Sort(vs)
	if n := len(vs); n%2 == 0 {
		return (vs[n/2-1] + vs[n/2]) / 2
	}
	return vs[len(vs)/2]
}
