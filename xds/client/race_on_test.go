//go:build race

package xdsclient

const (
	raceEnabled = true
	raceRecords = 50_000
)
