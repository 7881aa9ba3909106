//go:build !linux

package admin

import (
	"errors"
	"net"
)

func peerCred(*net.UnixConn) (uid, gid, pid int, err error) {
	return 0, 0, 0, errors.New("SO_PEERCRED is only supported on linux")
}
