// Package lifecycletest runs an assembled process's Run in a test: in
// the background, until the test stops it or ends.
package lifecycletest

import (
	"context"
	"testing"
	"time"
)

// Running is a Run under way.
type Running struct {
	cancel context.CancelFunc
	done   chan error
}

// Start calls run in the background with a context Stop (or the end of
// the test) cancels; the test's cleanup waits for run to return.
func Start(t testing.TB, run func(context.Context) error) *Running {
	ctx, cancel := context.WithCancel(context.Background())
	r := &Running{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- run(ctx) }()
	t.Cleanup(func() { cancel(); <-r.done; r.done <- nil })
	return r
}

// Wait returns what run returned, failing the test if it does not
// return within 20 s.
func (r *Running) Wait(t testing.TB) error {
	t.Helper()
	select {
	case err := <-r.done:
		r.done <- err // for later calls and the cleanup
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return within 20s")
		return nil
	}
}

// Stop cancels run's context and returns what run returned.
func (r *Running) Stop(t testing.TB) error {
	t.Helper()
	r.cancel()
	return r.Wait(t)
}
