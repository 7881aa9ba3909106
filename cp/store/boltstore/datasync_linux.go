package boltstore

import (
	"os"
	"syscall"
)

// datasync flushes f's data, and its size when the write grew it, to the
// disk (fdatasync: no inode timestamps).
func datasync(f *os.File) error { return syscall.Fdatasync(int(f.Fd())) }
