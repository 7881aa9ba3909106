package agentproto

import (
	"context"
	"testing"
	"time"
)

// cat echoes each command line back: a Response decoded from a Command line
// keeps the id, which is enough to check the session's framing.
func TestSessionRoundTrip(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := Start(t, "echoer", "/bin/sh", nil, "-c", "exec cat", "sh")
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"1", "2", "3"} {
		r, err := s.Do(ctx, Command{ID: id, Op: OpWhoami})
		if err != nil || r.ID != id {
			t.Fatalf("Do(%s) = %+v, %v", id, r, err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Do(ctx, Command{ID: "4", Op: OpWhoami}); err == nil {
		t.Fatal("Do after Close succeeded")
	}
}

func TestSessionTimesOut(t *testing.T) {
	s, err := Start(t, "silent", "/bin/sh", nil, "-c", "exec sleep 60", "sh")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := s.Do(ctx, Command{ID: "1", Op: OpWhoami}); err == nil {
		t.Fatal("Do returned without a response")
	}
}
