//go:build !race

package mandate

const raceAllocSlack = 0
