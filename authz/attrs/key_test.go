package attrs

import (
	"bytes"
	"hash/maphash"
	"reflect"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/authz/decisioncache"
	"github.com/mandate-dev/mandate/policies"
)

// notInKey lists the policies.Request fields WriteKey leaves out, and why.
var notInKey = map[string]string{
	"Now": "a decision that reads the time is not cached (Decision.Cacheable)",
}

func keyOf(r *policies.Request, sel KeySelection) []byte {
	var k decisioncache.Key
	WriteKey(&k, 7, r, &sel)
	return append([]byte(nil), k.Bytes()...)
}

func fullRequest() *policies.Request {
	return &policies.Request{
		Subject: "spiffe://example.org/a", Destination: "spiffe://example.org/d", Host: "h", Method: "GET",
		Path: "/p", GRPCService: "s.S", GRPCMethod: "M", Intent: "i", Task: "t",
		Labels:  map[string]string{"l": "v"},
		Headers: map[string]string{"x-a": "1"},
		Mandate: &policies.Mandate{ID: "m", Issuer: "iss", Task: "t", Intent: "i",
			Chain: []string{"spiffe://example.org/a"}, ExpiresAt: time.Unix(1000, 0)},
		MCP: &policies.MCPCall{Method: "tools/call", Tool: "t", ResourceURI: "u", Arguments: `{"a":1}`},
		Now: time.Unix(500, 0),
	}
}

// mutate changes every leaf of v (a field of policies.Request or of a
// struct it holds) in turn, calling check after each change and undoing
// it. A kind it does not know fails the test: extend it along with the
// request type.
func mutate(t *testing.T, path string, v reflect.Value, check func(path string)) {
	switch v.Kind() {
	case reflect.String:
		old := v.String()
		v.SetString(old + "x")
		check(path)
		v.SetString(old)
	case reflect.Map:
		old := v.Interface()
		m := reflect.MakeMap(v.Type())
		for _, k := range v.MapKeys() {
			m.SetMapIndex(k, v.MapIndex(k))
		}
		m.SetMapIndex(reflect.ValueOf("added"), reflect.ValueOf("v").Convert(v.Type().Elem()))
		v.Set(m)
		check(path + "[added]")
		v.Set(reflect.ValueOf(old))
	case reflect.Slice:
		old := v.Interface()
		v.Set(reflect.Append(v, reflect.ValueOf("x").Convert(v.Type().Elem())))
		check(path + "[+]")
		v.Set(reflect.ValueOf(old))
	case reflect.Bool:
		v.SetBool(!v.Bool())
		check(path)
		v.SetBool(!v.Bool())
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Uint, reflect.Uint64, reflect.Uint32, reflect.Uint8:
		old := v.Interface()
		if v.CanInt() {
			v.SetInt(v.Int() + 1)
		} else {
			v.SetUint(v.Uint() + 1)
		}
		check(path)
		v.Set(reflect.ValueOf(old))
	case reflect.Pointer:
		if v.IsNil() {
			t.Fatalf("%s: fullRequest must set every pointer", path)
		}
		old := v.Interface()
		v.Set(reflect.Zero(v.Type()))
		check(path + "=nil")
		v.Set(reflect.ValueOf(old))
		mutate(t, path, v.Elem(), check)
	case reflect.Struct:
		if v.Type() == reflect.TypeOf(time.Time{}) {
			old := v.Interface().(time.Time)
			v.Set(reflect.ValueOf(old.Add(time.Second)))
			check(path)
			v.Set(reflect.ValueOf(old))
			return
		}
		for i := 0; i < v.NumField(); i++ {
			mutate(t, path+"."+v.Type().Field(i).Name, v.Field(i), check)
		}
	default:
		t.Fatalf("%s: kind %s: teach mutate (and WriteKey) about it", path, v.Kind())
	}
}

// TestKeyCoversRequest fails when a field policies can read is not in the
// decision cache key: two requests differing only there would share a
// cached decision.
func TestKeyCoversRequest(t *testing.T) {
	r := fullRequest()
	all := KeySelection{AllHeaders: true, AllArguments: true, ArgSeeds: [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}}
	base := keyOf(r, all)
	rv := reflect.ValueOf(r).Elem()
	seen := 0
	for i := 0; i < rv.NumField(); i++ {
		name := rv.Type().Field(i).Name
		if _, skip := notInKey[name]; skip {
			continue
		}
		mutate(t, name, rv.Field(i), func(path string) {
			seen++
			if bytes.Equal(keyOf(r, all), base) {
				t.Errorf("changing %s leaves the cache key unchanged", path)
			}
		})
	}
	if !bytes.Equal(keyOf(r, all), base) {
		t.Fatal("mutate did not restore the request")
	}
	if seen < 15 {
		t.Fatalf("only %d fields mutated", seen)
	}
}

func TestKeyHeadersBySelection(t *testing.T) {
	r := fullRequest()
	sel := KeySelection{Headers: []string{"x-a"}}
	base := keyOf(r, sel)
	r.Headers = map[string]string{"x-a": "1", "x-other": "2"}
	if !bytes.Equal(keyOf(r, sel), base) {
		t.Error("a header no policy reads changed the key")
	}
	r.Headers = map[string]string{"x-a": "2"}
	if bytes.Equal(keyOf(r, sel), base) {
		t.Error("a header a policy reads is not in the key")
	}
	r.Headers = map[string]string{"x-a": ""}
	empty := keyOf(r, sel)
	r.Headers = map[string]string{}
	if bytes.Equal(keyOf(r, sel), empty) {
		t.Error("an absent header and an empty one share a key")
	}
}

// A condition reading every header must not make the key grow with the
// request.
func TestKeyBoundedWithManyHeaders(t *testing.T) {
	r := fullRequest()
	r.Headers = map[string]string{}
	for i := 0; i < 1000; i++ {
		r.Headers[string(rune('a'+i%26))+time.Duration(i).String()] = "value"
	}
	if n := len(keyOf(r, KeySelection{AllHeaders: true})); n > decisioncache.MaxRawKey+1 {
		t.Fatalf("key is %d bytes", n)
	}
}
