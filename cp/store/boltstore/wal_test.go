package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/cp/store/storetest"
)

// TestConformanceWhileApplying runs the conformance suite with the log
// applied to bbolt after every commit, and never (until Close): reads
// merge the log with bbolt at every stage.
func TestConformanceWhileApplying(t *testing.T) {
	for _, tc := range []struct {
		name  string
		delay time.Duration
	}{{"at-once", 0}, {"never", time.Hour}} {
		t.Run(tc.name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) store.Backend {
				be, err := openBackend(context.Background(), t.TempDir(), tc.delay, InitialMmapSize)
				if err != nil {
					t.Fatal(err)
				}
				return be
			})
		})
	}
}

// held opens a backend whose commits stay in its log until Close.
func held(t *testing.T, dir string) *Backend {
	t.Helper()
	return heldMapped(t, dir, InitialMmapSize)
}

// heldMapped is held with the file's initial mapping mmapSize.
func heldMapped(t *testing.T, dir string, mmapSize int) *Backend {
	t.Helper()
	be, err := openBackend(context.Background(), dir, time.Hour, mmapSize)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = be.Close() })
	return be
}

// writeApplied commits writeSome's updates from to from+n-1 in dir, and
// closes the backend, which applies them to bbolt.
func writeApplied(t *testing.T, dir string, from, n int) {
	t.Helper()
	be := held(t, dir)
	writeSome(t, be, from, n)
	if err := be.Close(); err != nil {
		t.Fatal(err)
	}
}

// crashCopy copies the data directory as a crash would leave it: the
// files as written so far, nothing applied or closed.
func crashCopy(t *testing.T, dir string) string {
	t.Helper()
	dst := t.TempDir()
	for _, name := range []string{FileName, LogFileName} {
		src, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		out, err := os.Create(filepath.Join(dst, name))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(out, src); err != nil {
			t.Fatal(err)
		}
		_ = src.Close()
		if err := out.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// reopenedAfterCrash opens a crash copy of dir.
func reopenedAfterCrash(t *testing.T, dir string) *Backend {
	t.Helper()
	return backendIn(t, crashCopy(t, dir))
}

// dump is everything a backend holds: each table's keys and values, each
// table's revision and the global one.
func dump(t *testing.T, be store.Backend, tables ...string) string {
	t.Helper()
	var b strings.Builder
	ctx := context.Background()
	rev, err := be.Update(ctx, func(store.Tx) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&b, "rev %d\n", rev)
	if err := be.View(ctx, func(tx store.Tx) error {
		for _, table := range tables {
			r, err := tx.Rev(table)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, "%s@%d:", table, r)
			if err := tx.Scan(table, "", func(k string, v []byte) (bool, error) {
				fmt.Fprintf(&b, " %s=%s", k, v)
				return true, nil
			}); err != nil {
				return err
			}
			b.WriteString("\n")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// writeSome commits n updates to tables a and b: puts, overwrites and
// deletes.
func writeSome(t *testing.T, be store.Backend, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		if _, err := be.Update(context.Background(), func(tx store.Tx) error {
			if err := tx.Put("a", fmt.Sprintf("k%03d", i), []byte(fmt.Sprint("v", i))); err != nil {
				return err
			}
			if i%3 == 0 {
				return tx.Delete("a", fmt.Sprintf("k%03d", i-2))
			}
			return tx.Put("b", "counter", []byte(fmt.Sprint(i)))
		}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCrashBeforeApplyKeepsEveryCommit: commits that were only in the
// log when the process died are all there, at their revisions, when the
// files are opened again.
func TestCrashBeforeApplyKeepsEveryCommit(t *testing.T) {
	dir := t.TempDir()
	be := held(t, dir)
	writeSome(t, be, 1, 40)
	want := dump(t, be, "a", "b")
	if !strings.HasPrefix(want, "rev 40\n") {
		t.Fatalf("before the crash:\n%s", want)
	}
	if got := dump(t, reopenedAfterCrash(t, dir), "a", "b"); got != want {
		t.Fatalf("after the crash:\n%s\nwant:\n%s", got, want)
	}
}

// TestTornFrameEndsTheLog: a frame cut short by a crash (its write was
// never acknowledged) and whatever follows it are not replayed; the
// commits before it are.
func TestTornFrameEndsTheLog(t *testing.T) {
	dir := t.TempDir()
	be := held(t, dir)
	writeSome(t, be, 1, 9)
	want := dump(t, be, "a", "b")
	be.wmu.Lock()
	end := be.log.off
	be.wmu.Unlock()
	writeSome(t, be, 10, 3)
	for _, cut := range []int64{1, frameHeader, frameHeader + 5} {
		t.Run(fmt.Sprint(cut), func(t *testing.T) {
			cp := crashCopy(t, dir)
			// The tenth frame keeps cut bytes, then garbage.
			f, err := os.OpenFile(filepath.Join(cp, LogFileName), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt(bytes.Repeat([]byte{0xa5}, 64), end+cut); err != nil {
				t.Fatal(err)
			}
			_ = f.Close()
			if got := dump(t, backendIn(t, cp), "a", "b"); got != want {
				t.Fatalf("after a torn tenth frame:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// TestLogRestartsOnceApplied: once bbolt holds every logged commit, the
// next frame is written at the start of the log, over the old ones, and
// the frames of the earlier run left after it are not replayed.
func TestLogRestartsOnceApplied(t *testing.T) {
	dir := t.TempDir()
	writeApplied(t, dir, 1, 6)
	be := held(t, dir)
	writeSome(t, be, 7, 1)
	be.wmu.Lock()
	off := be.log.off
	be.wmu.Unlock()
	if off != int64(len(frame7())) {
		t.Fatalf("the log ends at %d after one frame written once everything was applied, want %d", off, len(frame7()))
	}
	want := dump(t, be, "a", "b")
	if got := dump(t, reopenedAfterCrash(t, dir), "a", "b"); got != want || !strings.HasPrefix(got, "rev 7\n") {
		t.Fatalf("after the crash:\n%s\nwant:\n%s", got, want)
	}
}

// frame7 is the frame writeSome writes for its seventh commit.
func frame7() []byte {
	r := newRecord()
	r.rev = 7
	r.add(op{table: "a", key: "k007", val: []byte("v7")})
	r.add(op{table: "b", key: "counter", val: []byte("7")})
	return r.appendFrame(nil)
}

// TestLogWithAHoleRefused: a log whose commits start above the database's
// next revision (the database file replaced by an older one, or deleted
// without its log) is refused with an error that says so, not opened
// with a hole in its history.
func TestLogWithAHoleRefused(t *testing.T) {
	dir := t.TempDir()
	writeApplied(t, dir, 1, 2)
	writeSome(t, held(t, dir), 3, 2) // revisions 3 and 4, only in the log
	cp := crashCopy(t, dir)
	if err := os.Remove(filepath.Join(cp, FileName)); err != nil {
		t.Fatal(err)
	}
	_, err := OpenBackend(context.Background(), cp)
	if err == nil || !strings.Contains(err.Error(), "commits are missing") {
		t.Fatalf("open with a log starting at revision 3 over an empty database: %v", err)
	}
}

// TestFailedLogWriteStopsCommits: when a frame cannot be written, that
// commit's outcome is unknown and no later commit is accepted.
func TestFailedLogWriteStopsCommits(t *testing.T) {
	be := held(t, t.TempDir())
	writeSome(t, be, 1, 1)
	be.wmu.Lock()
	_ = be.log.f.Close() // every write to it fails from now on
	be.wmu.Unlock()
	_, err := be.Update(context.Background(), func(tx store.Tx) error { return tx.Put("a", "x", nil) })
	if !errors.Is(err, store.ErrOutcomeUnknown) {
		t.Fatalf("commit on a failed log: %v, want an unknown outcome", err)
	}
	_, err = be.Update(context.Background(), func(tx store.Tx) error { return tx.Put("a", "y", nil) })
	if err == nil || errors.Is(err, store.ErrOutcomeUnknown) {
		t.Fatalf("commit after a failed log write: %v, want refused", err)
	}
	var seen []string
	_ = be.View(context.Background(), func(tx store.Tx) error {
		return tx.Scan("a", "", func(k string, _ []byte) (bool, error) { seen = append(seen, k); return true, nil })
	})
	if strings.Join(seen, ",") != "k001" {
		t.Fatalf("keys visible after the failed writes: %v", seen)
	}
}

// TestFullLogIsAppliedAndRestarts: a commit that finds the log past its
// limit with commits not yet in bbolt has them applied at once (not after
// the batching delay, here an hour) and writes its frame at the start of
// the log: the log does not grow past its limit by more than a frame.
func TestFullLogIsAppliedAndRestarts(t *testing.T) {
	dir := t.TempDir()
	be := held(t, dir)
	be.wmu.Lock()
	be.limit = 1
	be.wmu.Unlock()
	for i := 1; i <= 5; i++ {
		writeSome(t, be, i, 1)
		be.wmu.Lock()
		off := be.log.off
		be.wmu.Unlock()
		be.mu.Lock()
		pend := len(be.pend)
		be.mu.Unlock()
		if off > 64 || pend != 1 {
			t.Fatalf("after commit %d: the log ends at %d with %d commits not in bbolt, want one frame and one", i, off, pend)
		}
	}
	want := dump(t, be, "a", "b")
	if got := dump(t, reopenedAfterCrash(t, dir), "a", "b"); got != want || !strings.HasPrefix(got, "rev 5\n") {
		t.Fatalf("after the crash:\n%s\nwant:\n%s", got, want)
	}
}

// TestFullLogWhileTheFileGrows: a commit that waits for the applier
// (the log past its limit) holds no bbolt read transaction meanwhile:
// bbolt grows its mapping of the file only once none is open, so an
// applier that must grow it would wait for the commit, and the commit for
// the applier. Here the mapping starts small and each commit is past the
// limit, so the applier remaps again and again.
func TestFullLogWhileTheFileGrows(t *testing.T) {
	be := heldMapped(t, t.TempDir(), 0)
	be.wmu.Lock()
	be.limit = 1
	be.wmu.Unlock()
	big := bytes.Repeat([]byte{7}, 256<<10)
	for i := range 24 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := be.Update(ctx, func(tx store.Tx) error { return tx.Put("big", fmt.Sprint(i), big) })
		cancel()
		if err != nil {
			t.Fatalf("commit %d: %v", i, err)
		}
	}
}

// FuzzReadFrame: any bytes read as a frame decode to a record or an
// error, never a panic; so does any payload in a frame with a valid
// header and checksum (where random bytes reach the payload's decoder),
// and a decoded record encodes to a frame that decodes to the same record.
func FuzzReadFrame(f *testing.F) {
	r := newRecord()
	r.rev = 42
	r.add(op{table: "t", key: "k", val: []byte("v")})
	r.add(op{table: "u", key: "gone", del: true})
	whole := r.appendFrame(nil)
	f.Add(whole)
	f.Add(whole[frameHeader:])
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0, 0, 0, 9, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if rec, _, err := readFrame(b); err == nil {
			sameRecordAgain(t, rec)
		}
		framed := binary.BigEndian.AppendUint32(nil, uint32(len(b)))
		framed = binary.BigEndian.AppendUint32(framed, crc32.Checksum(b, castagnoli))
		rec, n, err := readFrame(append(framed, b...))
		if err != nil {
			return
		}
		if n != frameHeader+len(b) {
			t.Fatalf("read %d bytes of a %d-byte frame", n, frameHeader+len(b))
		}
		sameRecordAgain(t, rec)
	})
}

// sameRecordAgain checks that rec, encoded and read back, is rec.
func sameRecordAgain(t *testing.T, rec *record) {
	t.Helper()
	again, _, err := readFrame(rec.appendFrame(nil))
	if err != nil {
		t.Fatalf("a decoded record does not read back: %v", err)
	}
	if again.rev != rec.rev || !slices.EqualFunc(again.ops, rec.ops, func(a, b op) bool {
		return a.table == b.table && a.key == b.key && a.del == b.del && bytes.Equal(a.val, b.val)
	}) {
		t.Fatalf("read back %+v, want %+v", again, rec)
	}
}
