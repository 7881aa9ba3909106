package boltstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// LogFileName is the write-ahead log beside the database file.
const LogFileName = "mandate.wal"

const (
	// logPrealloc is how much of the log file is zero-filled (and
	// synced) when it is created: a commit that overwrites allocated
	// blocks syncs its data alone, while one that grows the file also
	// syncs the file's size and extent metadata. The log starts again
	// from its beginning whenever bbolt holds all of it, so it rarely
	// outgrows this.
	logPrealloc = 1 << 20
	// logLimit: past this size a commit waits until bbolt holds every
	// commit before it, and the log starts again from its beginning.
	logLimit = 64 << 20
)

// logFile is the write-ahead log: from offset 0, the frames of the
// commits since it last started again (those bbolt does not hold yet,
// and those it has applied since), each one revision after the one
// before. It starts again at the first commit written once bbolt holds
// every one before.
type logFile struct {
	f   *os.File
	off int64 // where the next frame goes
}

// openLog opens (creating and zero-filling if needed) the log in dir and
// returns it with the records of its chain: the frames from offset 0
// while each is whole and one revision after the one before it. What
// follows the chain (a frame cut short by a crash, bytes of commits from
// before the log last started again) is not part of it.
func openLog(dir string) (*logFile, []*record, error) {
	path := filepath.Join(dir, LogFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("open %s: %w", path, err)
	}
	l := &logFile{f: f}
	recs, err := l.load(dir)
	if err != nil {
		_ = f.Close()
		return nil, nil, fmt.Errorf("log %s: %w", path, err)
	}
	return l, recs, nil
}

func (l *logFile) load(dir string) ([]*record, error) {
	fi, err := l.f.Stat()
	if err != nil {
		return nil, err
	}
	size := fi.Size()
	if size < logPrealloc {
		if err := l.zeroFill(dir, size); err != nil {
			return nil, err
		}
		size = logPrealloc
	}
	b := make([]byte, size)
	if _, err := l.f.ReadAt(b, 0); err != nil {
		return nil, err
	}
	var recs []*record
	for off := 0; ; {
		r, n, err := readFrame(b[off:])
		if err != nil || len(recs) > 0 && r.rev != recs[len(recs)-1].rev+1 {
			break
		}
		recs = append(recs, r)
		off += n
	}
	return recs, nil
}

// zeroFill extends the file from size to logPrealloc with zeros, synced,
// and syncs the directory (the file may be new).
func (l *logFile) zeroFill(dir string, size int64) error {
	zeros := make([]byte, logPrealloc-size)
	if _, err := l.f.WriteAt(zeros, size); err != nil {
		return err
	}
	if err := l.f.Sync(); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// append writes frame at the end of the chain, or at offset 0 (a new
// chain) when restart is set, and syncs it. The frame is durable when
// append returns nil.
func (l *logFile) append(frame []byte, restart bool) error {
	off := l.off
	if restart {
		off = 0
	}
	if _, err := l.f.WriteAt(frame, off); err != nil {
		return err
	}
	if err := datasync(l.f); err != nil {
		return err
	}
	l.off = off + int64(len(frame))
	return nil
}

func (l *logFile) close() error {
	if l.f == nil {
		return errors.New("log already closed")
	}
	err := l.f.Close()
	l.f = nil
	return err
}
