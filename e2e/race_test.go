//go:build race

package e2e

// raceBuild: the suite runs under -race, so the binaries it starts are
// built with -race too and their logs are checked for data races.
const raceBuild = true
