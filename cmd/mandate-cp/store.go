package main

import (
	"context"
	"flag"
	"log/slog"

	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/cp/store/boltstore"
)

// storeOptions choose and configure the durable store.
type storeOptions struct {
	kekFile string
}

func (s *storeOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&s.kekFile, "kek-file", "", "key-encryption key file: signing keys are stored sealed with its first key (\"<id> <base64 of 32 bytes>\" a line; later lines: older keys still read)")
}

// openStore opens the store under dataDir; with --kek-file, signing keys
// are sealed with the current key-encryption key (keys stored in the clear
// or under an older KEK are resealed now).
func openStore(ctx context.Context, dataDir string, so storeOptions, logger *slog.Logger) (*store.DB, error) {
	var opts []store.Option
	if so.kekFile != "" {
		cur, old, err := store.ReadKEKFile(so.kekFile)
		if err != nil {
			return nil, err
		}
		opts = append(opts, store.WithKeyEncryption(cur, old...))
	}
	st, err := boltstore.Open(ctx, dataDir, opts...)
	if err != nil {
		return nil, err
	}
	n, err := st.RewrapSigningKeys(ctx)
	if err != nil {
		_ = st.Close()
		return nil, err
	}
	if n > 0 {
		logger.Info("signing keys sealed with the current key-encryption key", "keys", n)
	}
	return st, nil
}
