package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"testing"

	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/cp/store/boltstore"
)

// TestKEKFileSealsSigningKeys: with --kek-file, the signing key mandate-cp
// creates is stored sealed: the data file does not hold it in the clear,
// it opens only with the KEK, and a KEK rotation (new first line, old one
// kept) reseals it at the next start.
func TestKEKFileSealsSigningKeys(t *testing.T) {
	dir := t.TempDir()
	kekFile := filepath.Join(t.TempDir(), "kek")
	k1 := bytes.Repeat([]byte{1}, 32)
	k2 := bytes.Repeat([]byte{2}, 32)
	line := func(id string, k []byte) string { return id + " " + base64.StdEncoding.EncodeToString(k) + "\n" }
	if err := os.WriteFile(kekFile, []byte(line("kek-1", k1)), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func() {
		p := start(t, binCP, "--data-dir", dir, "--plaintext", "--xds-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
			"--metrics-addr", "", "--log-level", "warn", "--kek-file", kekFile)
		p.stop(t)
	}
	run()
	openWith := func(opts ...store.Option) ([]store.SigningKey, error) {
		d, err := boltstore.Open(context.Background(), dir, opts...)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		return d.SigningKeys(context.Background())
	}
	if _, err := openWith(); err == nil {
		t.Fatal("the signing key opened without the KEK")
	}
	keys, err := openWith(store.WithKeyEncryption(store.KEK{ID: "kek-1", Key: k1}))
	if err != nil || len(keys) != 1 {
		t.Fatalf("with the KEK: %d keys, %v", len(keys), err)
	}
	for _, name := range []string{boltstore.FileName, boltstore.LogFileName} {
		raw, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(raw, keys[0].Private[:32]) || bytes.Contains(raw, []byte(base64.StdEncoding.EncodeToString(keys[0].Private)[:40])) {
			t.Fatalf("%s holds the signing key in the clear", name)
		}
	}

	// Rotation: kek-2 first, kek-1 still listed; a start reseals.
	if err := os.WriteFile(kekFile, []byte(line("kek-2", k2)+line("kek-1", k1)), 0o600); err != nil {
		t.Fatal(err)
	}
	run()
	if _, err := openWith(store.WithKeyEncryption(store.KEK{ID: "kek-2", Key: k2})); err != nil {
		t.Fatalf("after rotation, kek-2 alone: %v", err)
	}
	if err := os.Chmod(kekFile, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := store.ReadKEKFile(kekFile); err == nil {
		t.Fatal("a KEK file readable by others accepted")
	}
}
