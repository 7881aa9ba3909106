//go:build !race

package xdsclient

const (
	raceEnabled = false
	raceRecords = 0
)
