package policies

import (
	"math"
	"reflect"
	"strconv"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"

	"github.com/mandate-dev/mandate/authz/mcp"
)

// jsonObject is a CEL map(string, dyn) view over a JSON object that
// package authz/mcp validated (MCP arguments). A lookup scans the
// object's members and converts only the value found; nested objects are
// views too. Iteration, equality and conversion build the full map.
// It points to the text (one pointer: handing it to CEL as a ref.Val
// allocates nothing).
type jsonObject struct{ raw *string }

var _ traits.Mapper = jsonObject{}

// jsonValue converts validated JSON text to a CEL value: numbers become
// int when integral and within int64, else double.
func jsonValue(raw string) ref.Val {
	if raw == "" {
		return types.NewErr("empty JSON value")
	}
	switch raw[0] {
	case '{':
		obj := raw // a copy: taking raw's address would move it to the heap on every call
		return jsonObject{&obj}
	case '[':
		var elems []ref.Val
		mcp.Elements(raw, func(v string) bool {
			elems = append(elems, jsonValue(v))
			return true
		})
		return types.NewRefValList(types.DefaultTypeAdapter, elems)
	case '"':
		return types.String(mcp.Unquote(raw))
	case 't':
		return types.True
	case 'f':
		return types.False
	case 'n':
		return types.NullValue
	}
	if i, err := strconv.ParseInt(raw, 10, 64); err == nil {
		return types.Int(i)
	}
	f, err := strconv.ParseFloat(raw, 64)
	if err != nil || math.IsInf(f, 0) {
		return types.NewErr("JSON number %s out of range", raw)
	}
	return types.Double(f)
}

func (o jsonObject) full() traits.Mapper {
	m := map[ref.Val]ref.Val{}
	mcp.Members(*o.raw, func(name, value string) bool {
		m[types.String(name)] = jsonValue(value)
		return true
	})
	return types.NewRefValMap(types.DefaultTypeAdapter, m)
}

func (o jsonObject) Find(key ref.Val) (ref.Val, bool) {
	k, ok := key.(types.String)
	if !ok {
		return types.MaybeNoSuchOverloadErr(key), false
	}
	return o.find(string(k))
}

func (o jsonObject) find(key string) (ref.Val, bool) {
	var found ref.Val
	mcp.Members(*o.raw, func(name, value string) bool {
		if name == key {
			found = jsonValue(value)
			return false
		}
		return true
	})
	return found, found != nil
}

// FindStringKey is what CEL's field selection (mcp.arguments.owner,
// has(mcp.arguments.owner)) tries before Find: the same lookup without
// boxing the key or converting the map again. A missing member or a value
// that is an error returns false, and CEL then asks Find, which decides
// them as before (an error, or false for has()).
func (o jsonObject) FindStringKey(key string) (any, bool) {
	v, found := o.find(key)
	if !found || types.IsError(v) {
		return nil, false
	}
	return v, true
}

func (o jsonObject) Get(key ref.Val) ref.Val      { return mapGet(o, key) }
func (o jsonObject) Contains(key ref.Val) ref.Val { return mapContains(o, key) }

func (o jsonObject) Size() ref.Val {
	n := 0
	mcp.Members(*o.raw, func(string, string) bool { n++; return true })
	return types.Int(n)
}

func (o jsonObject) Iterator() traits.Iterator        { return o.full().Iterator() }
func (o jsonObject) Equal(other ref.Val) ref.Val      { return o.full().Equal(other) }
func (o jsonObject) Type() ref.Type                   { return types.MapType }
func (o jsonObject) Value() any                       { return o.full().Value() }
func (o jsonObject) ConvertToType(t ref.Type) ref.Val { return convertMap(o, o.full(), t) }
func (o jsonObject) ConvertToNative(t reflect.Type) (any, error) {
	return o.full().ConvertToNative(t)
}
