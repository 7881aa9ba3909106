#include "textflag.h"

// func indexSpecialAVX2(s string) int
//
// The index of the first byte of s that is '"', '\\', below 0x20 or at or
// above 0x80, looking only at the leading whole 32-byte blocks of s;
// len(s) &^ 31 when they hold none. Requires AVX2.
TEXT ·indexSpecialAVX2(SB), NOSPLIT, $0-24
	MOVQ s_base+0(FP), SI
	MOVQ s_len+8(FP), BX
	ANDQ $~31, BX
	XORQ AX, AX
	MOVL $0x22, DX
	MOVD DX, X1
	VPBROADCASTB X1, Y1 // '"' in every byte
	MOVL $0x5c, DX
	MOVD DX, X2
	VPBROADCASTB X2, Y2 // '\\'
	MOVL $0x20, DX
	MOVD DX, X3
	VPBROADCASTB X3, Y3 // 0x20

loop:
	CMPQ AX, BX
	JAE  none
	VMOVDQU  (SI)(AX*1), Y0
	VPCMPEQB Y0, Y1, Y4 // byte == '"'
	VPCMPEQB Y0, Y2, Y5 // byte == '\\'
	VPCMPGTB Y0, Y3, Y6 // 0x20 > byte as signed: below 0x20, or 0x80 and above
	VPOR     Y4, Y5, Y4
	VPOR     Y4, Y6, Y4
	VPMOVMSKB Y4, CX
	TESTL    CX, CX
	JNZ      found
	ADDQ     $32, AX
	JMP      loop

found:
	BSFL CX, CX
	ADDQ CX, AX
	VZEROUPPER
	MOVQ AX, ret+16(FP)
	RET

none:
	VZEROUPPER
	MOVQ BX, ret+16(FP)
	RET

// func prefetch(s string)
//
// Asks the CPU to bring every 64-byte line of s into its caches, without
// waiting for them (PREFETCHT0 never faults).
TEXT ·prefetch(SB), NOSPLIT, $0-16
	MOVQ s_base+0(FP), SI
	MOVQ s_len+8(FP), BX
	LEAQ (SI)(BX*1), BX
	ANDQ $~63, SI

ploop:
	CMPQ SI, BX
	JAE  pdone
	PREFETCHT0 (SI)
	ADDQ $64, SI
	JMP  ploop

pdone:
	RET
