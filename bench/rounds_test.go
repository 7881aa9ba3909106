package main

import (
	"strings"
	"testing"
)

// TestMedianOfRounds: a ratio is the median of the rounds' own ratios,
// so one round where the machine slowed the baseline (or the scenario)
// does not decide a goal; goals are judged on the merged figures.
func TestMedianOfRounds(t *testing.T) {
	scs := []scenario{
		{id: "baseline"},
		{id: "hit", base: "baseline", goals: []goal{rpsRatioAtLeast(0.9)}},
	}
	round := func(baseRPS, hitRPS float64) []*result {
		b := &result{ID: "baseline", RPS: baseRPS, Requests: 1}
		h := &result{ID: "hit", Baseline: "baseline", RPS: hitRPS, Requests: 1}
		rs := []*result{b, h}
		applyRatios(scs, rs)
		return rs
	}
	tests := []struct {
		name      string
		rounds    [][]*result
		wantRatio float64
		wantRPS   float64
		wantMet   bool
	}{
		{"one slow round among three", [][]*result{round(1000, 700), round(1000, 1100), round(800, 800)}, 1.0, 800, true},
		{"mostly below", [][]*result{round(1000, 800), round(1000, 850), round(1000, 1200)}, 0.85, 850, false},
		{"even count: mean of the middle two", [][]*result{round(1000, 800), round(1000, 1000), round(1000, 900), round(1000, 1100)}, 0.95, 950, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := medianOfRounds(scs, tt.rounds)
			var hit *result
			for _, r := range got {
				if r.ID == "hit" {
					hit = r
				}
			}
			if hit == nil {
				t.Fatal("no merged hit result")
			}
			if d := hit.Ratio["rps"] - tt.wantRatio; d > 1e-9 || d < -1e-9 {
				t.Errorf("rps ratio %v, want %v", hit.Ratio["rps"], tt.wantRatio)
			}
			if hit.RPS != tt.wantRPS {
				t.Errorf("rps %v, want %v", hit.RPS, tt.wantRPS)
			}
			if len(hit.Goals) != 1 || hit.Goals[0].Met != tt.wantMet {
				t.Errorf("goals %+v, want met=%v", hit.Goals, tt.wantMet)
			}
			if len(hit.Notes) == 0 || !strings.Contains(hit.Notes[len(hit.Notes)-1], "rounds") {
				t.Errorf("notes %q do not say the figures are medians", hit.Notes)
			}
		})
	}
	// A last round that failed for the scenario does not hide the others.
	failed := round(1000, 0)
	failed[1].Error, failed[1].Ratio = "warmup: connection refused", nil
	for _, r := range medianOfRounds(scs, [][]*result{round(1000, 900), round(1000, 1000), failed}) {
		if r.ID == "hit" && (r.Error != "" || r.Ratio["rps"] != 0.95 || !r.Goals[0].Met) {
			t.Errorf("with a failed last round: error %q, ratio %v, goals %+v", r.Error, r.Ratio, r.Goals)
		}
	}
	if one := [][]*result{round(1000, 900)}; medianOfRounds(scs, one)[1] != one[0][1] {
		t.Error("a single round is reported as it is")
	}
}
