//go:build race

package mandate

// The race detector's instrumentation may allocate.
const raceAllocSlack = 1 << 20
