//go:build !unix

package authz

import "time"

func processCPU() time.Duration { return 0 }
