package mandate

import (
	"encoding/json"
	"fmt"
	"os"
)

// ReadKeyFile reads verification keys from a JSON file, as mandate-authz
// --mandate-keys and mandatectl --keys take them:
// [{"kid": ..., "public_key": base64 Ed25519}].
func ReadKeyFile(path string) ([]Key, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("mandate: key file: %w", err)
	}
	var raw []struct {
		KID       string `json:"kid"`
		PublicKey []byte `json:"public_key"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("mandate: key file %s: %w", path, err)
	}
	keys := make([]Key, 0, len(raw))
	for _, k := range raw {
		keys = append(keys, Key{ID: k.KID, Public: k.PublicKey})
	}
	return keys, nil
}
