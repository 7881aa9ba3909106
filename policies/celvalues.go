package policies

import (
	"reflect"
	"strings"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
	"cel.dev/cel-go/interpreter"
)

// This file exposes a *Request to CEL without building maps per request:
// the activation resolves variables lazily (request.* and mandate.* are
// qualified variable names) and the `mandate`, `labels` and
// `request.headers` values are thin views over the Go fields.
// Every view type is pointer-shaped, so handing it to CEL allocates
// nothing. Rarely used operations (iteration, equality, conversion) build
// a full CEL map on demand.

// activation resolves the documented CEL variables from a Request.
type activation struct{ r *Request }

var _ interpreter.Activation = activation{}

func (a activation) ResolveName(name string) (any, bool) {
	r := a.r
	switch name {
	case varSubject:
		return types.String(r.Subject), true
	case varDestination:
		return types.String(r.Destination), true
	case varIntent:
		return types.String(r.Intent), true
	case varTask:
		return types.String(r.Task), true
	case "request.method":
		return types.String(r.Method), true
	case "request.path":
		return types.String(r.Path), true
	case "request.host":
		return types.String(r.Host), true
	case "request.grpc_service":
		return types.String(r.GRPCService), true
	case "request.grpc_method":
		return types.String(r.GRPCMethod), true
	case varHeaders:
		return strMap(r.Headers), true
	case varLabels:
		return strMap(r.Labels), true
	case varMandate:
		if r.Mandate == nil {
			return types.NullValue, true
		}
		return objVal[mandateFields]{mandateFields{r.Mandate}}, true
	case varChain:
		if r.Mandate == nil {
			return types.NewStringList(types.DefaultTypeAdapter, nil), true
		}
		return types.NewStringList(types.DefaultTypeAdapter, r.Mandate.Chain), true
	case varNow:
		return types.Timestamp{Time: r.Now}, true
	case "mcp.method":
		if r.MCP == nil {
			return types.String(""), true
		}
		return types.String(r.MCP.Method), true
	case "mcp.tool":
		if r.MCP == nil {
			return types.String(""), true
		}
		return types.String(r.MCP.Tool), true
	case "mcp.resource_uri":
		if r.MCP == nil {
			return types.String(""), true
		}
		return types.String(r.MCP.ResourceURI), true
	case varMCPArgs:
		if r.MCP == nil || r.MCP.Arguments == "" {
			empty := "{}"
			return jsonObject{&empty}, true
		}
		return jsonObject{&r.MCP.Arguments}, true
	}
	if field, ok := strings.CutPrefix(name, "mandate."); ok {
		if r.Mandate == nil {
			// Reading a mandate field without a mandate is an error, so
			// a condition cannot mistake "no mandate" for empty fields.
			return types.NewErr("no mandate: %s is not set", name), true
		}
		return mandateFields{r.Mandate}.lookup(field)
	}
	return nil, false
}

func (activation) Parent() interpreter.Activation { return nil }

// fields is a fixed set of named attributes read lazily.
type fields interface {
	lookup(name string) (ref.Val, bool)
	names() []string
}

type mandateFields struct{ m *Mandate }

var mandateFieldNames = []string{"id", "issuer", "task", "intent", "chain"}

func (f mandateFields) names() []string { return mandateFieldNames }

func (f mandateFields) lookup(name string) (ref.Val, bool) {
	switch name {
	case "id":
		return types.String(f.m.ID), true
	case "issuer":
		return types.String(f.m.Issuer), true
	case "task":
		return types.String(f.m.Task), true
	case "intent":
		return types.String(f.m.Intent), true
	case "chain":
		return types.NewStringList(types.DefaultTypeAdapter, f.m.Chain), true
	}
	return nil, false
}

// objVal is a CEL map(string, dyn) view over fields.
type objVal[F fields] struct{ f F }

var _ traits.Mapper = objVal[mandateFields]{}

func (o objVal[F]) full() traits.Mapper {
	m := make(map[ref.Val]ref.Val, len(o.f.names()))
	for _, n := range o.f.names() {
		v, _ := o.f.lookup(n)
		m[types.String(n)] = v
	}
	return types.NewRefValMap(types.DefaultTypeAdapter, m)
}

func (o objVal[F]) Find(key ref.Val) (ref.Val, bool) {
	k, ok := key.(types.String)
	if !ok {
		return types.MaybeNoSuchOverloadErr(key), false
	}
	return o.f.lookup(string(k))
}

func (o objVal[F]) Get(key ref.Val) ref.Val {
	v, found := o.Find(key)
	if !found {
		if v != nil {
			return v
		}
		return types.NewErr("no such key: %v", key)
	}
	return v
}

func (o objVal[F]) Contains(key ref.Val) ref.Val {
	v, found := o.Find(key)
	if !found && v != nil {
		return v
	}
	return types.Bool(found)
}

func (o objVal[F]) Size() ref.Val                    { return types.Int(len(o.f.names())) }
func (o objVal[F]) Iterator() traits.Iterator        { return o.full().Iterator() }
func (o objVal[F]) Equal(other ref.Val) ref.Val      { return o.full().Equal(other) }
func (o objVal[F]) Type() ref.Type                   { return types.MapType }
func (o objVal[F]) Value() any                       { return o.full().Value() }
func (o objVal[F]) ConvertToType(t ref.Type) ref.Val { return convertMap(o, o.full(), t) }
func (o objVal[F]) ConvertToNative(t reflect.Type) (any, error) {
	return o.full().ConvertToNative(t)
}

// strMap is a CEL map(string, string) view over a Go map.
type strMap map[string]string

var _ traits.Mapper = strMap(nil)

func (m strMap) full() traits.Mapper {
	return types.NewStringStringMap(types.DefaultTypeAdapter, m)
}

func (m strMap) Find(key ref.Val) (ref.Val, bool) {
	k, ok := key.(types.String)
	if !ok {
		return types.MaybeNoSuchOverloadErr(key), false
	}
	v, found := m[string(k)]
	if !found {
		return nil, false
	}
	return types.String(v), true
}

func (m strMap) Get(key ref.Val) ref.Val      { return mapGet(m, key) }
func (m strMap) Contains(key ref.Val) ref.Val { return mapContains(m, key) }

func (m strMap) Size() ref.Val                    { return types.Int(len(m)) }
func (m strMap) Iterator() traits.Iterator        { return m.full().Iterator() }
func (m strMap) Equal(other ref.Val) ref.Val      { return m.full().Equal(other) }
func (m strMap) Type() ref.Type                   { return types.MapType }
func (m strMap) Value() any                       { return map[string]string(m) }
func (m strMap) ConvertToType(t ref.Type) ref.Val { return convertMap(m, m.full(), t) }
func (m strMap) ConvertToNative(t reflect.Type) (any, error) {
	return m.full().ConvertToNative(t)
}

// finder is a CEL map that looks keys up one at a time (strMap,
// jsonObject): Find returns the value and true, an error value and false
// for a key of the wrong type, or nil and false when the key is absent.
type finder interface {
	Find(key ref.Val) (ref.Val, bool)
}

// mapGet is CEL's m[key] over a finder.
func mapGet(m finder, key ref.Val) ref.Val {
	v, found := m.Find(key)
	if !found {
		if v != nil {
			return v
		}
		return types.NewErr("no such key: %v", key)
	}
	return v
}

// mapContains is CEL's key in m over a finder.
func mapContains(m finder, key ref.Val) ref.Val {
	v, found := m.Find(key)
	if !found && v != nil {
		return v
	}
	return types.Bool(found)
}

func convertMap(self ref.Val, full traits.Mapper, t ref.Type) ref.Val {
	switch t {
	case types.MapType:
		return self
	case types.TypeType:
		return types.MapType
	}
	return full.ConvertToType(t)
}
