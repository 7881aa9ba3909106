package headers

import (
	"errors"
	"strings"
	"testing"
)

func reasonOf(t *testing.T, err error) Reason {
	t.Helper()
	if err == nil {
		return ""
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not a *headers.Error", err, err)
	}
	if e.Header == "" {
		t.Fatalf("error %v names no header", err)
	}
	return e.Reason
}

func TestSingle(t *testing.T) {
	tests := []struct {
		name    string
		headers map[string]string
		want    string
		present bool
		reason  Reason
	}{
		{"missing", map[string]string{"other": "x"}, "", false, ""},
		{"nil map", nil, "", false, ""},
		{"present", map[string]string{"x-a": "v"}, "v", true, ""},
		{"present empty", map[string]string{"x-a": ""}, "", true, ""},
		{"merged duplicates", map[string]string{"x-a": "v1,v2"}, "", true, ReasonDuplicateHeader},
		{"merged empty duplicate", map[string]string{"x-a": ","}, "", true, ReasonDuplicateHeader},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, ok, err := Single(tt.headers, "x-a")
			if r := reasonOf(t, err); r != tt.reason {
				t.Fatalf("reason = %q (%v), want %q", r, err, tt.reason)
			}
			if v != tt.want || ok != tt.present {
				t.Fatalf("Single = %q, %v; want %q, %v", v, ok, tt.want, tt.present)
			}
		})
	}
}

func TestIntentAndTask(t *testing.T) {
	intentMax := strings.Repeat("a", MaxIntentLength)
	taskMax := strings.Repeat("a", MaxTaskLength)
	tests := []struct {
		name         string
		value        *string // nil = header absent
		intent, task string
		intentReason Reason
		taskReason   Reason
	}{
		{name: "absent", value: nil},
		{name: "simple", value: ptr("search"), intent: "search", task: "search"},
		{name: "full charset", value: ptr("tool:search/web-v1.2_beta"), intent: "tool:search/web-v1.2_beta", task: "tool:search/web-v1.2_beta"},
		{name: "max intent length", value: ptr(intentMax), intent: intentMax, task: intentMax},
		{name: "over intent length fits task", value: ptr(intentMax + "a"), intentReason: ReasonHeaderTooLong, task: intentMax + "a"},
		{name: "max task length", value: ptr(taskMax), intentReason: ReasonHeaderTooLong, task: taskMax},
		{name: "over task length", value: ptr(taskMax + "a"), intentReason: ReasonHeaderTooLong, taskReason: ReasonHeaderTooLong},
		{name: "empty", value: ptr(""), intentReason: ReasonBadIntent, taskReason: ReasonBadTask},
		{name: "duplicate", value: ptr("search,admin"), intentReason: ReasonDuplicateHeader, taskReason: ReasonDuplicateHeader},
		{name: "space", value: ptr("read all"), intentReason: ReasonBadIntent, taskReason: ReasonBadTask},
		{name: "envoy non-utf8 replacement", value: ptr("caf!"), intentReason: ReasonBadIntent, taskReason: ReasonBadTask},
		{name: "raw utf8", value: ptr("caf\xc3\xa9"), intentReason: ReasonBadIntent, taskReason: ReasonBadTask},
		{name: "CRLF", value: ptr("a\r\nx: y"), intentReason: ReasonBadIntent, taskReason: ReasonBadTask},
		{name: "NUL", value: ptr("a\x00"), intentReason: ReasonBadIntent, taskReason: ReasonBadTask},
		{name: "semicolon", value: ptr("a;b"), intentReason: ReasonBadIntent, taskReason: ReasonBadTask},
		{name: "wildcard", value: ptr("*"), intentReason: ReasonBadIntent, taskReason: ReasonBadTask},
		{name: "quote", value: ptr(`"a"`), intentReason: ReasonBadIntent, taskReason: ReasonBadTask},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := map[string]string{"x-other": "1"}
			if tt.value != nil {
				h[IntentHeader] = *tt.value
				h[TaskHeader] = *tt.value
			}
			got, err := Intent(h)
			if r := reasonOf(t, err); r != tt.intentReason || got != tt.intent {
				t.Fatalf("Intent = %.40q, reason %q (%v); want %.40q, %q", got, r, err, tt.intent, tt.intentReason)
			}
			got, err = Task(h)
			if r := reasonOf(t, err); r != tt.taskReason || got != tt.task {
				t.Fatalf("Task = %.40q, reason %q (%v); want %.40q, %q", got, r, err, tt.task, tt.taskReason)
			}
		})
	}
}

func TestMandate(t *testing.T) {
	const jws = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJzcGlmZmU6Ly9leGFtcGxlLm9yZy9hIn0.c2lnbmF0dXJlLWJ5dGVz-_"
	long := "a." + strings.Repeat("b", MaxMandateLength) + ".c"
	tests := []struct {
		name   string
		value  *string
		want   string
		reason Reason
	}{
		{"absent", nil, "", ""},
		{"compact JWS", ptr(jws), jws, ""},
		{"max length", ptr("a." + strings.Repeat("b", MaxMandateLength-4) + ".c"), "a." + strings.Repeat("b", MaxMandateLength-4) + ".c", ""},
		{"too long", ptr(long), "", ReasonHeaderTooLong},
		{"duplicate", ptr(jws + "," + jws), "", ReasonDuplicateHeader},
		{"empty", ptr(""), "", ReasonBadMandateHeader},
		{"two parts", ptr("a.b"), "", ReasonBadMandateHeader},
		{"four parts (JWE has five)", ptr("a.b.c.d"), "", ReasonBadMandateHeader},
		{"JWE", ptr("a.b.c.d.e"), "", ReasonBadMandateHeader},
		{"empty payload (detached)", ptr("a..c"), "", ReasonBadMandateHeader},
		{"empty signature (alg none)", ptr("a.b."), "", ReasonBadMandateHeader},
		{"empty header", ptr(".b.c"), "", ReasonBadMandateHeader},
		{"padding", ptr("a.b=.c"), "", ReasonBadMandateHeader},
		{"std base64", ptr("a+/.b.c"), "", ReasonBadMandateHeader},
		{"bearer prefix", ptr("Bearer " + jws), "", ReasonBadMandateHeader},
		{"whitespace", ptr(jws + " "), "", ReasonBadMandateHeader},
		{"JSON serialization", ptr(`{"payload":"a"}`), "", ReasonBadMandateHeader},
		{"envoy non-utf8 replacement", ptr("a.b!.c"), "", ReasonBadMandateHeader},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := map[string]string{}
			if tt.value != nil {
				h[MandateHeader] = *tt.value
			}
			got, err := Mandate(h)
			if r := reasonOf(t, err); r != tt.reason {
				t.Fatalf("Mandate reason = %q (%v), want %q", r, err, tt.reason)
			}
			if got != tt.want {
				t.Fatalf("Mandate = %.40q, want %.40q", got, tt.want)
			}
		})
	}
}

func TestErrorMessage(t *testing.T) {
	_, err := Intent(map[string]string{IntentHeader: "a,b"})
	if err == nil || !strings.HasPrefix(err.Error(), "headers: x-mandate-intent: duplicate_header") {
		t.Fatalf("error = %v", err)
	}
}

func ptr(s string) *string { return &s }
