// Package mandatev1 holds the xDS resource types of Mandate (protobuf
// package mandate.v1) and their type URLs. The *.pb.go files are generated
// by proto/generate.sh from proto/mandate/v1; do not edit them.
package mandatev1

import (
	"crypto/sha256"
	"encoding/hex"
)

// Type URLs of the resources, as they appear in xDS requests and in the
// google.protobuf.Any that carries each resource.
const (
	PolicyTypeURL          = "type.googleapis.com/mandate.v1.Policy"
	RevocationTypeURL      = "type.googleapis.com/mandate.v1.Revocation"
	ApprovalTypeURL        = "type.googleapis.com/mandate.v1.Approval"
	VerificationKeyTypeURL = "type.googleapis.com/mandate.v1.VerificationKey"
)

// TypeURLs lists every resource type, in the order a replica subscribes.
func TypeURLs() []string {
	return []string{PolicyTypeURL, RevocationTypeURL, ApprovalTypeURL, VerificationKeyTypeURL}
}

// PolicyVersion returns the content hash a Policy's version field holds:
// "sha256:" followed by the hex SHA-256 of source.
func PolicyVersion(source []byte) string {
	sum := sha256.Sum256(source)
	return "sha256:" + hex.EncodeToString(sum[:])
}
