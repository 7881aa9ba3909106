package xdsclient

import (
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/mandate-dev/mandate/authz/revocation"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// Field numbers of mandate.v1.RevocationShard, Revocation and
// google.protobuf.Timestamp (proto/mandate/v1/resources.proto).
const (
	fieldShardName        = 1
	fieldShardRevocations = 2

	fieldRevName      = 1
	fieldRevKind      = 2
	fieldRevValue     = 3
	fieldRevIntents   = 4
	fieldRevExpires   = 5
	fieldRevReason    = 6
	fieldRevCreatedAt = 7
	fieldRevCreatedBy = 8

	fieldTsSeconds = 1
	fieldTsNanos   = 2
)

// Bounds of a valid google.protobuf.Timestamp (timestamppb CheckValid).
const (
	minTimestamp = -62135596800 // 0001-01-01T00:00:00Z
	maxTimestamp = 253402300799 // 9999-12-31T23:59:59Z
)

// shardDecoder reads a mandate.v1.RevocationShard straight into
// revocation.Records, without the intermediate messages: every string of
// the shard's records is a substring of one copy of the shard's bytes
// (one allocation per shard, not five per record). It accepts only what
// proto.Unmarshal and resource.RecordOf accept, and gives the same
// records (FuzzShardDecoder checks it); it refuses a known field of the
// wrong wire type, which proto.Unmarshal would keep as an unknown field.
type shardDecoder struct {
	raw []byte // the shard's bytes
	str string // the same bytes, once, as a string
}

// sub returns the bytes v (a sub-slice of the shard's bytes) as the
// substring of the shard's string that holds them.
func (d *shardDecoder) sub(v []byte) string {
	i := cap(d.raw) - cap(v)
	return d.str[i : i+len(v)]
}

// at returns v, a sub-slice of d.raw, as a substring of d.str, checked
// to be UTF-8.
func (d *shardDecoder) at(v []byte) (string, error) {
	s := d.sub(v)
	if !utf8.ValidString(s) {
		return "", errors.New("string field is not valid UTF-8")
	}
	return s, nil
}

var errWireType = errors.New("field of the wrong wire type")

// nextField consumes one field of b: its number, wire type, and for a
// length-delimited field its bytes (a sub-slice of b), else its varint.
func nextField(b []byte) (num protowire.Number, typ protowire.Type, v []byte, x uint64, rest []byte, err error) {
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 {
		return 0, 0, nil, 0, nil, protowire.ParseError(n)
	}
	if !num.IsValid() {
		return 0, 0, nil, 0, nil, fmt.Errorf("invalid field number %d", num)
	}
	b = b[n:]
	switch typ {
	case protowire.BytesType:
		v, n = protowire.ConsumeBytes(b)
	case protowire.VarintType:
		x, n = protowire.ConsumeVarint(b)
	default:
		n = protowire.ConsumeFieldValue(num, typ, b)
	}
	if n < 0 {
		return 0, 0, nil, 0, nil, protowire.ParseError(n)
	}
	return num, typ, v, x, b[n:], nil
}

// decode reads the shard: it returns the name the shard gives itself and
// calls each for every record, in order.
func (d *shardDecoder) decode(each func(revocation.Record) error) (string, error) {
	var name string
	b := d.raw
	for len(b) > 0 {
		num, typ, v, _, rest, err := nextField(b)
		if err != nil {
			return "", fmt.Errorf("decode: %w", err)
		}
		b = rest
		switch num {
		case fieldShardName:
			if typ != protowire.BytesType {
				return "", fmt.Errorf("decode: name: %w", errWireType)
			}
			if name, err = d.at(v); err != nil {
				return "", fmt.Errorf("decode: name: %w", err)
			}
		case fieldShardRevocations:
			if typ != protowire.BytesType {
				return "", fmt.Errorf("decode: revocations: %w", errWireType)
			}
			rec, err := d.record(v)
			if err != nil {
				return "", err
			}
			if err := each(rec); err != nil {
				return "", err
			}
		}
	}
	return name, nil
}

// record reads one Revocation as resource.RecordOf converts it.
func (d *shardDecoder) record(b []byte) (revocation.Record, error) {
	var (
		r                   revocation.Record
		kind                string
		expires, created    timestamp
		hasExpires, hasCrea bool
	)
	for len(b) > 0 {
		num, typ, v, _, rest, err := nextField(b)
		if err != nil {
			return r, fmt.Errorf("Revocation %q: decode: %w", r.ID, err)
		}
		b = rest
		if num < fieldRevName || num > fieldRevCreatedBy {
			continue // unknown field
		}
		if typ != protowire.BytesType {
			return r, fmt.Errorf("Revocation %q: decode: field %d: %w", r.ID, num, errWireType)
		}
		var s string
		switch num {
		case fieldRevExpires:
			err, hasExpires = expires.merge(v), true
		case fieldRevCreatedAt:
			err, hasCrea = created.merge(v), true
		default:
			s, err = d.at(v)
		}
		if err != nil {
			return r, fmt.Errorf("Revocation %q: decode: field %d: %w", r.ID, num, err)
		}
		switch num {
		case fieldRevName:
			r.ID = s
		case fieldRevKind:
			kind = s
		case fieldRevValue:
			r.Value = s
		case fieldRevIntents:
			r.Intents = append(r.Intents, s)
		case fieldRevReason:
			r.Reason = s
		case fieldRevCreatedBy:
			r.CreatedBy = s
		}
	}
	var err error
	if r.Kind, err = revocation.ParseKind(kind); err != nil {
		return r, fmt.Errorf("Revocation %q: %w", r.ID, err)
	}
	if hasExpires {
		if r.Expires, err = expires.time(); err != nil {
			return r, fmt.Errorf("Revocation %q: expires: %w", r.ID, err)
		}
	}
	if hasCrea {
		if r.CreatedAt, err = created.time(); err != nil {
			return r, fmt.Errorf("Revocation %q: created_at: %w", r.ID, err)
		}
	}
	return r, nil
}

// timestamp is a google.protobuf.Timestamp being decoded; a field seen
// twice merges as proto.Unmarshal merges it (the last value wins).
type timestamp struct {
	seconds int64
	nanos   int32
}

func (t *timestamp) merge(b []byte) error {
	for len(b) > 0 {
		num, typ, _, x, rest, err := nextField(b)
		if err != nil {
			return err
		}
		b = rest
		if num != fieldTsSeconds && num != fieldTsNanos {
			continue
		}
		if typ != protowire.VarintType {
			return errWireType
		}
		if num == fieldTsSeconds {
			t.seconds = int64(x)
		} else {
			t.nanos = int32(x)
		}
	}
	return nil
}

// time is timestamppb's CheckValid and AsTime.
func (t timestamp) time() (time.Time, error) {
	switch {
	case t.seconds < minTimestamp:
		return time.Time{}, fmt.Errorf("timestamp (seconds:%d nanos:%d) before 0001-01-01", t.seconds, t.nanos)
	case t.seconds > maxTimestamp:
		return time.Time{}, fmt.Errorf("timestamp (seconds:%d nanos:%d) after 9999-12-31", t.seconds, t.nanos)
	case t.nanos < 0 || t.nanos >= 1e9:
		return time.Time{}, fmt.Errorf("timestamp (seconds:%d nanos:%d) has out-of-range nanos", t.seconds, t.nanos)
	}
	return time.Unix(t.seconds, int64(t.nanos)).UTC(), nil
}

// decodeShard decodes the shard a replica received under name and puts
// each of its records into ed; it returns the shard's bytes as one
// string (every string of its records is a substring of it) and appends
// the records' ids, in order, to ids. A shard must name itself name,
// hold at least one record, each in this shard
// (mandatev1.RevocationShardOf) and in strictly increasing name order
// (so no record is held twice); each record is validated as it joins the
// set.
func decodeShard(name string, e entry, ed *revocation.Editor, ids []string) (string, []string, error) {
	idx, ok := mandatev1.ParseRevocationShardName(name)
	if !ok {
		return "", ids, fmt.Errorf("Revocation shard %q: not a shard name", name)
	}
	if e.res == nil {
		return "", ids, fmt.Errorf("Revocation shard %q: no resource body", name)
	}
	if t := e.res.GetTypeUrl(); t != mandatev1.RevocationShardTypeURL {
		return "", ids, fmt.Errorf("Revocation shard %q: resource has type %q", name, t)
	}
	d := shardDecoder{raw: e.res.GetValue(), str: string(e.res.GetValue())}
	first := len(ids)
	self, err := d.decode(func(r revocation.Record) error {
		id := r.ID
		switch {
		case id == "":
			return errors.New("a record with an empty name")
		case mandatev1.RevocationShardOf(id) != idx:
			return fmt.Errorf("Revocation %q: not in this shard", id)
		case len(ids) > first && id <= ids[len(ids)-1]:
			return fmt.Errorf("Revocation %q: out of order or repeated", id)
		}
		if err := ed.Put(r); err != nil {
			return fmt.Errorf("Revocation %q: %w", id, err)
		}
		ids = append(ids, id)
		return nil
	})
	if err != nil {
		return "", ids, fmt.Errorf("Revocation shard %q: %w", name, err)
	}
	if self != name {
		return "", ids, fmt.Errorf("Revocation shard %q: resource names itself %q", name, self)
	}
	if len(ids) == first {
		return "", ids, fmt.Errorf("Revocation shard %q: no records", name)
	}
	return d.str, ids, nil
}

// eachShardID calls f with the id of every record of a shard decodeShard
// accepted before, given as the string it returned (the ids are
// substrings of it: nothing is allocated).
func eachShardID(name, raw string, f func(id string)) error {
	// Read only: the bytes of raw are never written.
	d := shardDecoder{raw: unsafe.Slice(unsafe.StringData(raw), len(raw)), str: raw}
	b := d.raw
	for len(b) > 0 {
		num, typ, v, _, rest, err := nextField(b)
		if err != nil {
			return fmt.Errorf("Revocation shard %q: held shard: %w", name, err)
		}
		b = rest
		if num != fieldShardRevocations || typ != protowire.BytesType {
			continue
		}
		// The record's last name field, as proto.Unmarshal (and
		// shardDecoder.record) would keep it.
		var id string
		for len(v) > 0 {
			num, typ, fv, _, rest, err := nextField(v)
			if err != nil {
				return fmt.Errorf("Revocation shard %q: held shard: %w", name, err)
			}
			v = rest
			if num == fieldRevName && typ == protowire.BytesType {
				id = d.sub(fv) // checked when the shard was decoded
			}
		}
		f(id)
	}
	return nil
}
