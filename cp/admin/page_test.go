package admin

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/authz/revocation"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// TestListRevocationsPages: a large list comes in pages; following
// next_page_token visits every record once, in order, even when records
// are added between pages.
func TestListRevocationsPages(t *testing.T) {
	h := startEnvoyHarness(t)
	ctx := context.Background()
	revoke := func(i int) {
		t.Helper()
		h.clock.advance(time.Second)
		if _, err := h.p.Revoke(ctx, revocation.Record{Kind: revocation.KindTask, Value: fmt.Sprintf("t-%02d", i),
			Expires: h.clock.now().Add(time.Hour)}, "test"); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 25 {
		revoke(i)
	}
	seen := map[string]bool{}
	var order []string
	token, pages := "", 0
	for {
		resp, err := h.admin.ListRevocations(ctx, &mandatev1.ListRevocationsRequest{PageSize: 10, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if len(resp.GetRevocations()) > 10 {
			t.Fatalf("page of %d records, asked for 10", len(resp.GetRevocations()))
		}
		for _, r := range resp.GetRevocations() {
			if seen[r.GetValue()] {
				t.Fatalf("%s listed twice", r.GetValue())
			}
			seen[r.GetValue()] = true
			order = append(order, r.GetValue())
		}
		if pages == 1 {
			revoke(25) // arrives while the client pages
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	if pages != 3 || len(seen) != 26 || order[0] != "t-00" || order[25] != "t-25" {
		t.Fatalf("%d pages, %d records, order %v", pages, len(seen), order)
	}
	if _, err := h.admin.ListRevocations(ctx, &mandatev1.ListRevocationsRequest{PageToken: "garbage"}); err == nil {
		t.Fatal("a bad page token was accepted")
	}
}
