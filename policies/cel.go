package policies

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"cel.dev/cel-go/cel"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/cost"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/ext"
)

// CEL variable names; doc.go documents them.
const (
	varSubject     = "subject"
	varDestination = "destination"
	varIntent      = "intent"
	varTask        = "task"
	varRequest     = "request" // only as the prefix of request.* variables
	varHeaders     = "request.headers"
	varLabels      = "labels"
	varMandate     = "mandate"
	varChain       = "chain"
	varNow         = "now"
	varMCP         = "mcp" // only as the prefix of mcp.* variables
	varMCPArgs     = "mcp.arguments"
)

// celVarNames are the names a comprehension variable must not shadow
// for the header and clock analysis to stay exact.
var celVarNames = []string{varSubject, varDestination, varIntent, varTask, varRequest, varLabels, varMandate, varChain, varNow, varMCP}

// mcpVars are the mcp.* variables: the MCP request on routes labelled
// protocol: mcp ("" and an empty map elsewhere). Argument values are
// JSON: strings, bools, null, lists, maps, and numbers as int when
// integral and within int64, else double.
var mcpVars = []struct {
	name string
	typ  *cel.Type
}{
	{"mcp.method", cel.StringType},
	{"mcp.tool", cel.StringType},
	{"mcp.resource_uri", cel.StringType},
	{varMCPArgs, cel.MapType(cel.StringType, cel.DynType)},
}

// requestVars are the request.* variables, declared as qualified names so
// the type checker knows each one's exact type (in particular that header
// values are strings: indexing a dyn map would leave the value's type to
// inference, and int(request.headers["x"]) would then pick int(int)).
var requestVars = []struct {
	name string
	typ  *cel.Type
}{
	{"request.method", cel.StringType},
	{"request.path", cel.StringType},
	{"request.host", cel.StringType},
	{"request.grpc_service", cel.StringType},
	{"request.grpc_method", cel.StringType},
	{varHeaders, cel.MapType(cel.StringType, cel.StringType)},
}

// mandateVars are the mandate.* variables; `mandate` itself is dyn (null
// or a map) so that `mandate == null` type-checks.
var mandateVars = []struct {
	name string
	typ  *cel.Type
}{
	{"mandate.id", cel.StringType},
	{"mandate.issuer", cel.StringType},
	{"mandate.task", cel.StringType},
	{"mandate.intent", cel.StringType},
	{"mandate.chain", cel.ListType(cel.StringType)},
}

const (
	// MaxConditionLength is the longest `when` expression accepted.
	MaxConditionLength = 4096
	// ConditionCostLimit bounds the runtime cost of one condition
	// evaluation; a condition exceeding it fails (closed).
	ConditionCostLimit = 100_000
)

// newCELEnv builds the environment every condition of a Set compiles in.
func newCELEnv() (*cel.Env, error) {
	opts := []cel.EnvOption{
		cel.Variable(varSubject, cel.StringType),
		cel.Variable(varDestination, cel.StringType),
		cel.Variable(varIntent, cel.StringType),
		cel.Variable(varTask, cel.StringType),
		cel.Variable(varLabels, cel.MapType(cel.StringType, cel.StringType)),
		cel.Variable(varMandate, cel.DynType),
		cel.Variable(varChain, cel.ListType(cel.StringType)),
		cel.Variable(varNow, cel.TimestampType),
		ext.Strings(),
		cel.CrossTypeNumericComparisons(true),
		cel.ParserExpressionSizeLimit(MaxConditionLength),
		cel.ParserRecursionLimit(64),
	}
	for _, v := range requestVars {
		opts = append(opts, cel.Variable(v.name, v.typ))
	}
	for _, v := range mandateVars {
		opts = append(opts, cel.Variable(v.name, v.typ))
	}
	for _, v := range mcpVars {
		opts = append(opts, cel.Variable(v.name, v.typ))
	}
	env, err := cel.NewEnv(opts...)
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
	// argKeys are the MCP argument names read by constant name; allArgs
	// is set when the arguments are read in any other way.
	argKeys []string
	allArgs bool
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
	a := analysis{keys: map[string]bool{}, argKeys: map[string]bool{}}
	a.walk(checked.NativeRep().Expr())
	if len(a.errs) > 0 {
		return nil, errors.Join(a.errs...)
	}
	// Runtime cost tracking allocates a tracker per evaluation. When the
	// static worst case, with every input at the largest size Envoy
	// forwards, is already within the limit, it cannot be exceeded and
	// tracking is left off; otherwise every evaluation is metered.
	opts := []cel.ProgramOption{cel.EvalOptions(cel.OptOptimize)}
	if est, err := env.EstimateCost(checked, inputBounds{}); err != nil || est.Max > ConditionCostLimit {
		opts = append(opts, cel.CostLimit(ConditionCostLimit))
	}
	prg, err := env.Program(checked, opts...)
	if err != nil {
		return nil, fmt.Errorf("planning: %w", err)
	}
	c := &condition{prg: prg, usesNow: a.usesNow, allHeaders: a.allHeaders, allArgs: a.allArgs}
	for k := range a.keys {
		c.headerKeys = append(c.headerKeys, k)
	}
	sort.Strings(c.headerKeys)
	for k := range a.argKeys {
		c.argKeys = append(c.argKeys, k)
	}
	sort.Strings(c.argKeys)
	return c, nil
}

// inputBounds bounds the size of every input for the static cost
// estimate: Envoy forwards at most 60 KiB of request headers (default
// max_request_headers_kb), so no string, and no map or list, is larger.
type inputBounds struct{}

const maxInputSize = 64 << 10

func (inputBounds) EstimateSize(cost.AstNode) *cost.SizeEstimate {
	return &cost.SizeEstimate{Min: 0, Max: maxInputSize}
}

func (inputBounds) EstimateCallCost(string, string, *cost.AstNode, []cost.AstNode) *cost.CallEstimate {
	return nil
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
	argKeys    map[string]bool
	allArgs    bool
	usesNow    bool
	errs       []error
}

func (a *analysis) walk(e celast.Expr) {
	switch e.Kind() {
	case celast.IdentKind:
		switch e.AsIdent() {
		case varNow:
			a.usesNow = true
		case varHeaders:
			// The headers map used as a value (iterated, passed to a
			// function, indexed by a computed key): any header may be read.
			a.allHeaders = true
		case varMCPArgs:
			a.allArgs = true // likewise for the MCP arguments
		}
	case celast.SelectKind:
		sel := e.AsSelect()
		op := sel.Operand()
		switch {
		case isIdent(op, varHeaders):
			a.addKey(sel.FieldName())
			return
		case isIdent(op, varMCPArgs):
			a.argKeys[sel.FieldName()] = true
			return
		case isIdent(op, varMandate):
			if !contains(mandateFieldNames, sel.FieldName()) {
				a.errs = append(a.errs, fmt.Errorf("mandate has no field %q (fields: %s)", sel.FieldName(), strings.Join(mandateFieldNames, ", ")))
			}
			return
		}
		a.walk(op)
	case celast.CallKind:
		call := e.AsCall()
		args := call.Args()
		switch {
		case call.FunctionName() == "_[_]" && len(args) == 2:
			if lit, ok := stringLiteral(args[1]); ok && isIdent(args[0], varHeaders) {
				a.addKey(lit)
				return
			}
			if lit, ok := stringLiteral(args[1]); ok && isIdent(args[0], varMCPArgs) {
				a.argKeys[lit] = true
				return
			}
		case call.FunctionName() == "@in" && len(args) == 2:
			if lit, ok := stringLiteral(args[0]); ok && isIdent(args[1], varHeaders) {
				a.addKey(lit)
				return
			}
			if lit, ok := stringLiteral(args[0]); ok && isIdent(args[1], varMCPArgs) {
				a.argKeys[lit] = true
				return
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
			if contains(celVarNames, v) {
				// A loop variable shadows a request variable: give up
				// on precision and assume the worst.
				a.allHeaders, a.usesNow, a.allArgs = true, true, true
			}
		}
		a.walk(c.IterRange())
		a.walk(c.AccuInit())
		a.walk(c.LoopCondition())
		a.walk(c.LoopStep())
		a.walk(c.Result())
	}
}

func (a *analysis) addKey(key string) {
	if key != strings.ToLower(key) {
		a.errs = append(a.errs, fmt.Errorf("header %q is never present: request header names are lowercase", key))
		return
	}
	a.keys[key] = true
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
