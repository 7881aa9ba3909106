package authz

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"sync/atomic"
)

// idGen makes decision ids: a random per-process prefix and a counter, so
// ids are unique across replicas and cost no syscall per decision.
type idGen struct {
	prefix [8]byte
	n      atomic.Uint64
}

func newIDGen() (*idGen, error) {
	g := &idGen{}
	if _, err := rand.Read(g.prefix[:]); err != nil {
		return nil, fmt.Errorf("authz: decision id prefix: %w", err)
	}
	return g, nil
}

func (g *idGen) next() string {
	var raw [16]byte
	copy(raw[:8], g.prefix[:])
	binary.BigEndian.PutUint64(raw[8:], g.n.Add(1))
	var out [32]byte
	hex.Encode(out[:], raw[:])
	return string(out[:])
}
