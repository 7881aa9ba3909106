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

// decisionID is a decision id in hex.
type decisionID [32]byte

// next writes the next id into id.
func (g *idGen) next(id *decisionID) {
	var raw [16]byte
	copy(raw[:8], g.prefix[:])
	binary.BigEndian.PutUint64(raw[8:], g.n.Add(1))
	hex.Encode(id[:], raw[:])
}
