package policies

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"cel.dev/cel-go/cel"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/ext"
)

// CEL variable names; doc.go documents them.
const (
	varSubject     = "subject"
	varDestination = "destination"
	varIntent      = "intent"
	varTask        = "task"
	varRequest     = "request"
	varLabels      = "labels"
	varMandate     = "mandate"
	varChain       = "chain"
	varNow         = "now"
)

var celVarNames = []string{varSubject, varDestination, varIntent, varTask, varRequest, varLabels, varMandate, varChain, varNow}

const (
	// MaxConditionLength is the longest `when` expression accepted.
	MaxConditionLength = 4096
	// ConditionCostLimit bounds the runtime cost of one condition
	// evaluation; a condition exceeding it fails (closed).
	ConditionCostLimit = 100_000
)

// newCELEnv builds the environment every condition of a Set compiles in.
func newCELEnv() (*cel.Env, error) {
	env, err := cel.NewEnv(
		cel.Variable(varSubject, cel.StringType),
		cel.Variable(varDestination, cel.StringType),
		cel.Variable(varIntent, cel.StringType),
		cel.Variable(varTask, cel.StringType),
		cel.Variable(varRequest, cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable(varLabels, cel.MapType(cel.StringType, cel.StringType)),
		cel.Variable(varMandate, cel.DynType),
		cel.Variable(varChain, cel.ListType(cel.StringType)),
		cel.Variable(varNow, cel.TimestampType),
		ext.Strings(),
		cel.ParserExpressionSizeLimit(MaxConditionLength),
		cel.ParserRecursionLimit(64),
	)
	if err != nil {
		return nil, fmt.Errorf("policies: building CEL environment: %w", err)
	}
	return env, nil
}

// condition is a compiled `when` expression.
type condition struct {
	prg cel.Program
	// usesNow is set when the expression reads `now`: decisions that
	// evaluated it are not cacheable.
	usesNow bool
	// headerKeys are the header names read by constant index.
	headerKeys []string
	// allHeaders is set when the expression reads headers in a way that
	// static analysis cannot pin to constant names.
	allHeaders bool
}

// compileCondition type-checks, analyses and plans one expression.
func compileCondition(env *cel.Env, src string) (*condition, error) {
	if len(src) > MaxConditionLength {
		return nil, fmt.Errorf("expression of %d bytes exceeds %d", len(src), MaxConditionLength)
	}
	checked, iss := env.Compile(src)
	if iss != nil && iss.Err() != nil {
		return nil, errors.New(strings.TrimSpace(iss.Err().Error()))
	}
	if !checked.OutputType().IsExactType(types.BoolType) {
		return nil, fmt.Errorf("must return bool, returns %s", checked.OutputType())
	}
	a := analysis{keys: map[string]bool{}}
	a.walk(checked.NativeRep().Expr())
	if len(a.errs) > 0 {
		return nil, errors.Join(a.errs...)
	}
	prg, err := env.Program(checked,
		cel.CostLimit(ConditionCostLimit),
		cel.EvalOptions(cel.OptOptimize),
	)
	if err != nil {
		return nil, fmt.Errorf("planning: %w", err)
	}
	c := &condition{prg: prg, usesNow: a.usesNow, allHeaders: a.allHeaders}
	for k := range a.keys {
		c.headerKeys = append(c.headerKeys, k)
	}
	sort.Strings(c.headerKeys)
	return c, nil
}

// eval runs the condition. Anything but a bool result is an error.
func (c *condition) eval(r *Request) (bool, error) {
	out, _, err := c.prg.Eval(activation{r})
	if err != nil {
		return false, err
	}
	b, ok := out.(types.Bool)
	if !ok {
		return false, fmt.Errorf("condition returned %s, not bool", out.Type().TypeName())
	}
	return bool(b), nil
}

// analysis walks a checked expression and records what it reads.
type analysis struct {
	keys       map[string]bool
	allHeaders bool
	usesNow    bool
	errs       []error
}

func (a *analysis) walk(e celast.Expr) {
	switch e.Kind() {
	case celast.IdentKind:
		switch e.AsIdent() {
		case varNow:
			a.usesNow = true
		case varRequest:
			// The request map used as a whole value: anything in it,
			// headers included, may be read.
			a.allHeaders = true
		}
	case celast.SelectKind:
		sel := e.AsSelect()
		if a.access(sel.Operand(), sel.FieldName(), sel.IsTestOnly()) {
			return
		}
		a.walk(sel.Operand())
	case celast.CallKind:
		call := e.AsCall()
		args := call.Args()
		switch {
		case call.FunctionName() == "_[_]" && len(args) == 2:
			if lit, ok := stringLiteral(args[1]); ok && a.access(args[0], lit, false) {
				return
			}
		case call.FunctionName() == "@in" && len(args) == 2:
			if lit, ok := stringLiteral(args[0]); ok {
				if isHeaders(args[1]) {
					a.addKey(lit)
					return
				}
				if isIdent(args[1], varRequest) {
					return // a presence test on the request's own fields
				}
			}
		}
		if call.IsMemberFunction() {
			a.walk(call.Target())
		}
		for _, arg := range args {
			a.walk(arg)
		}
	case celast.ListKind:
		for _, el := range e.AsList().Elements() {
			a.walk(el)
		}
	case celast.MapKind:
		for _, en := range e.AsMap().Entries() {
			a.walk(en.AsMapEntry().Key())
			a.walk(en.AsMapEntry().Value())
		}
	case celast.StructKind:
		for _, f := range e.AsStruct().Fields() {
			a.walk(f.AsStructField().Value())
		}
	case celast.ComprehensionKind:
		c := e.AsComprehension()
		for _, v := range []string{c.IterVar(), c.IterVar2(), c.AccuVar()} {
			for _, n := range celVarNames {
				if v == n {
					// A loop variable shadows a request variable: give
					// up on precision and assume the worst.
					a.allHeaders, a.usesNow = true, true
				}
			}
		}
		a.walk(c.IterRange())
		a.walk(c.AccuInit())
		a.walk(c.LoopCondition())
		a.walk(c.LoopStep())
		a.walk(c.Result())
	}
}

// access handles operand.key / operand["key"] / has(operand.key) and
// reports whether it consumed the expression.
func (a *analysis) access(operand celast.Expr, key string, testOnly bool) bool {
	if operand.Kind() == celast.IdentKind {
		switch operand.AsIdent() {
		case varRequest:
			if !contains(requestFieldNames, key) {
				a.errs = append(a.errs, fmt.Errorf("request has no field %q (fields: %s)", key, strings.Join(requestFieldNames, ", ")))
				return true
			}
			if key == "headers" && !testOnly {
				// The headers map used as a value (iterated, passed
				// to a function, indexed by a computed key).
				a.allHeaders = true
			}
			return true
		case varMandate:
			if !contains(mandateFieldNames, key) {
				a.errs = append(a.errs, fmt.Errorf("mandate has no field %q (fields: %s)", key, strings.Join(mandateFieldNames, ", ")))
			}
			return true
		}
		return false
	}
	if isHeaders(operand) {
		a.addKey(key)
		return true
	}
	return false
}

func (a *analysis) addKey(key string) {
	if key != strings.ToLower(key) {
		a.errs = append(a.errs, fmt.Errorf("header %q is never present: request header names are lowercase", key))
		return
	}
	a.keys[key] = true
}

// isHeaders reports whether e is request.headers or request["headers"].
func isHeaders(e celast.Expr) bool {
	switch e.Kind() {
	case celast.SelectKind:
		sel := e.AsSelect()
		return !sel.IsTestOnly() && sel.FieldName() == "headers" && isIdent(sel.Operand(), varRequest)
	case celast.CallKind:
		call := e.AsCall()
		if call.FunctionName() != "_[_]" || len(call.Args()) != 2 {
			return false
		}
		lit, ok := stringLiteral(call.Args()[1])
		return ok && lit == "headers" && isIdent(call.Args()[0], varRequest)
	}
	return false
}

func isIdent(e celast.Expr, name string) bool {
	return e.Kind() == celast.IdentKind && e.AsIdent() == name
}

func stringLiteral(e celast.Expr) (string, bool) {
	if e.Kind() != celast.LiteralKind {
		return "", false
	}
	s, ok := e.AsLiteral().(types.String)
	return string(s), ok
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
