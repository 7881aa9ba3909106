//go:build race

package xdsclient

const (
	raceEnabled = true
	raceRecords = 100_000
)
