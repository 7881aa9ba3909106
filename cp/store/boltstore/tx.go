package boltstore

import (
	"errors"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// tx is a store.Tx over a view; w collects an Update's writes (nil in a
// View).
type tx struct {
	view
	w *record
}

func (t *tx) Get(table, key string) ([]byte, bool, error) {
	if t.w != nil {
		if o, ok := t.w.lookup(table, key); ok {
			return value(o)
		}
	}
	for i := len(t.over) - 1; i >= 0; i-- {
		if o, ok := t.over[i].lookup(table, key); ok {
			return value(o)
		}
	}
	bk := t.btx.Bucket(tableBucket(table))
	if bk == nil {
		return nil, false, nil
	}
	v := bk.Get([]byte(key))
	if v == nil {
		return nil, false, nil
	}
	return append([]byte{}, v...), true, nil
}

func value(o op) ([]byte, bool, error) {
	if o.del {
		return nil, false, nil
	}
	return append([]byte{}, o.val...), true, nil
}

var errReadOnly = errors.New("write in a read-only transaction")

func (t *tx) Put(table, key string, val []byte) error {
	if t.w == nil {
		return errReadOnly
	}
	if key == "" || table == "" {
		return errors.New("empty key")
	}
	// Copied: the commit outlives the caller's buffer.
	t.w.add(op{table: table, key: key, val: append([]byte{}, val...)})
	return nil
}

func (t *tx) Delete(table, key string) error {
	if t.w == nil {
		return errReadOnly
	}
	if key == "" || table == "" {
		return nil
	}
	t.w.add(op{table: table, key: key, del: true})
	return nil
}

// Scan merges bbolt's keys with the logged commits' writes to table (the
// last write of a key wins; a deletion hides it).
func (t *tx) Scan(table, from string, fn func(string, []byte) (bool, error)) error {
	var over map[string]op
	for _, r := range t.over {
		if !r.wrote(table) {
			continue
		}
		for _, o := range r.ops {
			if o.table == table && o.key >= from {
				if over == nil {
					over = map[string]op{}
				}
				over[o.key] = o
			}
		}
	}
	keys := make([]string, 0, len(over))
	for k := range over {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var c *bolt.Cursor
	var bk, bv []byte
	if b := t.btx.Bucket(tableBucket(table)); b != nil {
		c = b.Cursor()
		bk, bv = c.Seek([]byte(from))
	}
	for i := 0; ; {
		var k string
		var v []byte
		switch {
		case i < len(keys) && (bk == nil || keys[i] <= string(bk)):
			o := over[keys[i]]
			if bk != nil && keys[i] == string(bk) {
				bk, bv = c.Next()
			}
			i++
			if o.del {
				continue
			}
			k, v = o.key, o.val
		case bk != nil:
			k, v = string(bk), bv
			bk, bv = c.Next()
		default:
			return nil
		}
		more, err := fn(k, append([]byte{}, v...))
		if err != nil || !more {
			return err
		}
	}
}

// Rev is the revision of the last commit that wrote table; an Update's
// own writes do not count (their revision is not known yet).
func (t *tx) Rev(table string) (uint64, error) {
	for i := len(t.over) - 1; i >= 0; i-- {
		if t.over[i].wrote(table) {
			return t.over[i].rev, nil
		}
	}
	return getU64(t.btx.Bucket(bucketRevs).Get([]byte(table))), nil
}
