package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestEchoRecordsAndReports(t *testing.T) {
	rec := newRecorder(2)
	srv := httptest.NewServer(rec)
	defer srv.Close()

	send := func(method, target string, hdr map[string]string) *http.Response {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+target, strings.NewReader("payload"))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	resp := send(http.MethodPost, "/a?b=1", map[string]string{"X-Test": "1"})
	var got Seen
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got.Method != http.MethodPost || got.RequestURI != "/a?b=1" || got.Headers["X-Test"][0] != "1" || got.Body != "payload" {
		t.Fatalf("echo = %+v", got)
	}
	send(http.MethodGet, "/two", nil).Body.Close()
	send(http.MethodGet, "/three", nil).Body.Close()

	seen := func() []Seen {
		resp := send(http.MethodGet, "/_seen", nil)
		defer resp.Body.Close()
		var s []Seen
		if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := seen()
	if len(s) != 2 || s[0].RequestURI != "/two" || s[1].RequestURI != "/three" {
		t.Fatalf("seen = %+v, want the last two requests", s)
	}
	resp = send(http.MethodDelete, "/_seen", nil)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE /_seen = %d", resp.StatusCode)
	}
	if s := seen(); len(s) != 0 {
		t.Fatalf("seen after reset = %+v", s)
	}
}
