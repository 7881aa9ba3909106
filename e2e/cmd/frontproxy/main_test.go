package main

import "testing"

func TestLoadRoutes(t *testing.T) {
	tests := []struct {
		name, inline string
		want         int
		wantErr      bool
	}{
		{"none", "", 0, false},
		{"two", `[{"prefix":"/api","context_extensions":{"dest":"api"}},{"prefix":"/healthz","disabled":true}]`, 2, false},
		{"unknown field", `[{"prefix":"/api","extensions":{}}]`, 0, true},
		{"not json", `[{`, 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := loadRoutes("", tc.inline)
			if (err != nil) != tc.wantErr || len(got) != tc.want {
				t.Fatalf("loadRoutes = %v, %v", got, err)
			}
		})
	}
	if r, _ := loadRoutes("", `[{"prefix":"/healthz","disabled":true}]`); !r[0].Disabled {
		t.Fatal("disabled flag lost")
	}
	if _, err := loadRoutes("x", "[]"); err == nil {
		t.Fatal("both -routes and -routes-json accepted")
	}
}
