package boltstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
)

// op is one write of a commit: a key set to a value, or deleted.
type op struct {
	table, key string
	val        []byte
	del        bool
}

// record is one commit: its revision and its writes, each key once (the
// last write to it). Immutable once it is in the log: readers share it.
type record struct {
	rev uint64
	ops []op
	// idx finds a key's op: table + "\x00" + key -> index in ops.
	idx map[string]int
	// tables are the tables written, in first-write order.
	tables []string
}

func newRecord() *record { return &record{idx: map[string]int{}} }

func opKey(table, key string) string { return table + "\x00" + key }

// add records a write, replacing an earlier one to the same key.
func (r *record) add(o op) {
	k := opKey(o.table, o.key)
	if i, ok := r.idx[k]; ok {
		r.ops[i] = o
		return
	}
	r.idx[k] = len(r.ops)
	r.ops = append(r.ops, o)
	if !r.wrote(o.table) {
		r.tables = append(r.tables, o.table)
	}
}

// lookup returns the write to key in table, if the commit has one.
func (r *record) lookup(table, key string) (op, bool) {
	i, ok := r.idx[opKey(table, key)]
	if !ok {
		return op{}, false
	}
	return r.ops[i], true
}

func (r *record) wrote(table string) bool {
	for _, t := range r.tables {
		if t == table {
			return true
		}
	}
	return false
}

// A record in the log file is a frame:
//
//	uint32 payload length | uint32 CRC-32C of the payload | payload
//
// and its payload
//
//	uint64 revision | uvarint op count | per op: byte kind (0 put, 1
//	delete), uvarint-length-prefixed table, key and (puts only) value
//
// the fixed-width integers big-endian, the others encoding/binary
// uvarints. A zero length marks the end (the file is zero-filled ahead of
// its records). A payload is at most maxPayload bytes: the encoder refuses
// what the decoder would.
const frameHeader = 8

// maxPayload is the largest payload a frame's length field holds.
const maxPayload = math.MaxUint32

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// appendFrame appends r's frame to dst.
func (r *record) appendFrame(dst []byte) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, frameHeader)...)
	dst = binary.BigEndian.AppendUint64(dst, r.rev)
	dst = binary.AppendUvarint(dst, uint64(len(r.ops)))
	for _, o := range r.ops {
		kind := byte(0)
		if o.del {
			kind = 1
		}
		dst = append(dst, kind)
		dst = appendString(dst, o.table)
		dst = appendString(dst, o.key)
		if !o.del {
			dst = binary.AppendUvarint(dst, uint64(len(o.val)))
			dst = append(dst, o.val...)
		}
	}
	payload := dst[start+frameHeader:]
	binary.BigEndian.PutUint32(dst[start:], uint32(len(payload)))
	binary.BigEndian.PutUint32(dst[start+4:], crc32.Checksum(payload, castagnoli))
	return dst
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

var errEnd = errors.New("end of log")

// readFrame decodes the frame at the start of b and returns its record
// and length. errEnd: a zero length, or too few bytes for a header (the
// end of the records); any other error: a frame that is torn or is not
// one (a write cut short by a crash, or bytes of an older run).
func readFrame(b []byte) (*record, int, error) {
	if len(b) < frameHeader {
		return nil, 0, errEnd
	}
	n := binary.BigEndian.Uint32(b)
	if n == 0 {
		return nil, 0, errEnd
	}
	if uint64(n) > uint64(len(b)-frameHeader) {
		return nil, 0, fmt.Errorf("frame of %d bytes past the end of the file", n)
	}
	payload := b[frameHeader : frameHeader+int(n)]
	if crc32.Checksum(payload, castagnoli) != binary.BigEndian.Uint32(b[4:]) {
		return nil, 0, errors.New("checksum mismatch")
	}
	r, err := decodePayload(payload)
	if err != nil {
		return nil, 0, err
	}
	return r, frameHeader + int(n), nil
}

// decodePayload decodes a checksummed payload. It copies what it keeps:
// the record outlives the file's buffer.
func decodePayload(p []byte) (*record, error) {
	if len(p) < 8 {
		return nil, errors.New("short payload")
	}
	r := newRecord()
	r.rev = binary.BigEndian.Uint64(p)
	p = p[8:]
	count, n := binary.Uvarint(p)
	if n <= 0 {
		return nil, errors.New("bad op count")
	}
	p = p[n:]
	// Every op takes at least 3 bytes: no count can ask for more ops
	// than the payload holds.
	if count > uint64(len(p))/3 {
		return nil, fmt.Errorf("%d ops in %d bytes", count, len(p))
	}
	for range count {
		if len(p) == 0 || p[0] > 1 {
			return nil, errors.New("bad op kind")
		}
		o := op{del: p[0] == 1}
		p = p[1:]
		var err error
		var table, key []byte
		if table, p, err = readBytes(p); err != nil {
			return nil, err
		}
		if key, p, err = readBytes(p); err != nil {
			return nil, err
		}
		if len(table) == 0 || len(key) == 0 {
			return nil, errors.New("empty table or key")
		}
		o.table, o.key = string(table), string(key)
		if !o.del {
			var val []byte
			if val, p, err = readBytes(p); err != nil {
				return nil, err
			}
			o.val = append([]byte{}, val...)
		}
		if _, dup := r.idx[opKey(o.table, o.key)]; dup {
			return nil, errors.New("key written twice in one record")
		}
		r.add(o)
	}
	if len(p) != 0 {
		return nil, errors.New("trailing bytes")
	}
	return r, nil
}

func readBytes(p []byte) ([]byte, []byte, error) {
	l, n := binary.Uvarint(p)
	if n <= 0 || l > uint64(len(p)-n) {
		return nil, nil, errors.New("bad length")
	}
	return p[n : n+int(l)], p[n+int(l):], nil
}
