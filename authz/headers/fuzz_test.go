package headers

import (
	"strings"
	"testing"
)

func FuzzIntent(f *testing.F) {
	for _, s := range []string{"search", "tool:search/web-v1.2_beta", "", "a,b", "caf!", "a\r\nb", strings.Repeat("x", 200)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		for _, c := range []struct {
			fn     func(map[string]string) (string, error)
			header string
			max    int
		}{{Intent, IntentHeader, MaxIntentLength}, {Task, TaskHeader, MaxTaskLength}} {
			got, err := c.fn(map[string]string{c.header: v})
			if err != nil {
				if reasonOf(t, err) == "" || got != "" {
					t.Fatalf("%s(%q) = %q, %v", c.header, v, got, err)
				}
				continue
			}
			if got != v || got == "" || len(got) > c.max || strings.Trim(got, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:/-") != "" {
				t.Fatalf("%s(%q) accepted %q", c.header, v, got)
			}
		}
	})
}

func FuzzMandate(f *testing.F) {
	for _, s := range []string{"a.b.c", "a..c", "a.b.c.d", "a.b=.c", "", "eyJ.eyJ.sig,eyJ.eyJ.sig"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		got, err := Mandate(map[string]string{MandateHeader: v})
		if err != nil {
			if reasonOf(t, err) == "" || got != "" {
				t.Fatalf("Mandate(%q) = %q, %v", v, got, err)
			}
			return
		}
		parts := strings.Split(got, ".")
		if got != v || len(got) > MaxMandateLength || len(parts) != 3 {
			t.Fatalf("Mandate(%q) accepted %q", v, got)
		}
		for _, p := range parts {
			if p == "" || strings.Trim(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") != "" {
				t.Fatalf("Mandate(%q) accepted part %q", v, p)
			}
		}
	})
}
