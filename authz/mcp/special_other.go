//go:build !amd64

package mcp

// haveSpecialBlocks is false: the scanner uses strPortable.
const haveSpecialBlocks = false

// indexSpecialBlocks is never called where haveSpecialBlocks is false.
func indexSpecialBlocks(s string) int { return 0 }

// prefetch does nothing here.
func prefetch(string) {}
