package plane

import (
	"errors"
	"time"
)

// Phases of a write (mandate_cp_write_phase_seconds).
const (
	writePhaseCommit  = "commit"
	writePhasePublish = "publish"
	writePhaseServed  = "served"
)

func (p *Plane) phase(typeURL, phase string, d time.Duration) {
	p.phases.WithLabelValues(short(typeURL), phase).Observe(d.Seconds())
}

func (p *Plane) countWrite(typeURL string, err error) {
	res := "ok"
	var inv *InvalidError
	switch {
	case errors.As(err, &inv):
		res = "invalid"
	case err != nil:
		res = "error"
	}
	p.writes.WithLabelValues(short(typeURL), res).Inc()
}
