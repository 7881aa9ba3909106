package mcp

import "golang.org/x/sys/cpu"

// haveSpecialBlocks reports whether indexSpecialBlocks scans in blocks
// (AVX2); otherwise the scanner uses strPortable.
var haveSpecialBlocks = cpu.X86.HasAVX2

// indexSpecialAVX2 is in special_amd64.s.
//
//go:noescape
func indexSpecialAVX2(s string) int

// indexSpecialBlocks returns the index of the first special byte (see
// isSpecial) in the leading whole 32-byte blocks of s, else len(s) &^ 31.
func indexSpecialBlocks(s string) int {
	if len(s) < 32 {
		return 0
	}
	return indexSpecialAVX2(s)
}

// prefetch is in special_amd64.s.
//
//go:noescape
func prefetch(s string)
