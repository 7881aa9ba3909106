package revocation

import (
	"testing"
	"time"
)

func TestCheck(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	later := now.Add(time.Hour)
	set, err := NewSet([]Record{
		{ID: "r1", Kind: KindSubject, Value: "spiffe://example.org/agent/bad", Expires: later},
		{ID: "r2", Kind: KindSubject, Value: "spiffe://example.org/team-x/**", Expires: later},
		{ID: "r3", Kind: KindTask, Value: "task-1", Expires: later},
		{ID: "r4", Kind: KindMandate, Value: "m-root", Expires: later},
		{ID: "r5", Kind: KindSubject, Value: "spiffe://example.org/agent/old", Expires: now},
		{ID: "r6", Kind: KindTask, Value: "task-ro", Intents: []string{"read"}, Expires: later},
		{ID: "r7", Kind: KindSubject, Value: "spiffe://example.org/agent/ro", Intents: []string{"read", "list"}, Expires: later},
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		q      Query
		record string
		down   bool
	}{
		{"clean", Query{Subject: "spiffe://example.org/agent/good", Task: "t", Chain: []string{"m1"}}, "", false},
		{"subject", Query{Subject: "spiffe://example.org/agent/bad"}, "r1", false},
		{"pattern", Query{Subject: "spiffe://example.org/team-x/a/b"}, "r2", false},
		{"pattern miss", Query{Subject: "spiffe://example.org/team-y/a"}, "", false},
		{"task", Query{Subject: "spiffe://example.org/agent/good", Task: "task-1"}, "r3", false},
		{"mandate root revokes subtree", Query{Subject: "spiffe://example.org/agent/good", Chain: []string{"m-root", "m-child", "m-grandchild"}}, "r4", false},
		{"expired record", Query{Subject: "spiffe://example.org/agent/old"}, "", false},
		{"downgrade allows listed intent", Query{Subject: "spiffe://example.org/agent/good", Task: "task-ro", Intent: "read"}, "", false},
		{"downgrade refuses other intent", Query{Subject: "spiffe://example.org/agent/good", Task: "task-ro", Intent: "write"}, "r6", true},
		{"downgrade refuses empty intent", Query{Subject: "spiffe://example.org/agent/ro"}, "r7", true},
		{"both downgrades must allow", Query{Subject: "spiffe://example.org/agent/ro", Task: "task-ro", Intent: "list"}, "r6", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := set.Check(now, tt.q)
			if v.Record != tt.record || v.Revoked != (tt.record != "") || v.Downgraded != tt.down {
				t.Fatalf("Check = %+v, want record %q downgraded %v", v, tt.record, tt.down)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	exp := time.Now().Add(time.Hour)
	bad := []Record{
		{Kind: KindSubject, Value: "spiffe://x/y", Expires: exp},
		{ID: "a", Kind: KindSubject, Value: "", Expires: exp},
		{ID: "a", Kind: KindSubject, Value: "spiffe://x/y"},
		{ID: "a", Kind: KindSubject, Value: "not-spiffe", Expires: exp},
		{ID: "a", Kind: KindSubject, Value: "spiffe://x/**/y", Expires: exp},
		{ID: "a", Kind: 9, Value: "v", Expires: exp},
		{ID: "a", Kind: KindTask, Value: "t", Intents: []string{""}, Expires: exp},
	}
	for i, r := range bad {
		if _, err := NewSet([]Record{r}); err == nil {
			t.Errorf("record %d: NewSet accepted %+v", i, r)
		}
	}
	if Empty().Len() != 0 {
		t.Fatal("Empty not empty")
	}
}
