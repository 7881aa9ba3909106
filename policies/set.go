package policies

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// Set is an immutable, compiled and indexed set of policies. It is safe
// for concurrent use. A nil or empty Set denies everything with
// ReasonNoPolicy.
type Set struct {
	// rules in evaluation order: enforce rules before dry-run rules, and
	// within each, deny before step_up before allow, each in load order.
	// A rule's id is its position here.
	rules    []rule
	firstDry int
	root     *trieNode

	policies   []*Policy
	version    string
	headerKeys []string
	allHeaders bool
	argKeys    []string
	allArgs    bool
}

// rule is a compiled rule.
type rule struct {
	staticRule
	policy string
	name   string
	dryRun bool
	order  int // load order across the set
	cond   *condition
}

// Compile validates policies, compiles their conditions and builds the
// index. Policy names must be unique across the set. The policies must
// not be modified afterwards.
func Compile(policies []*Policy) (*Set, error) {
	var errs errList
	env, err := newCELEnv()
	if err != nil {
		return nil, err
	}
	s := &Set{policies: append([]*Policy(nil), policies...)}
	names := map[string]string{}
	keys := map[string]bool{}
	argKeys := map[string]bool{}
	// Rules often share a condition: each distinct expression is compiled
	// once and its program shared (programs are immutable and safe for
	// concurrent use), which keeps large sets small in memory.
	conds := map[string]*condition{}
	order := 0
	for _, p := range policies {
		if p == nil {
			errs.add("", "", "", "", fmt.Errorf("nil policy"))
			continue
		}
		if prev, dup := names[p.Metadata.Name]; dup {
			where := ""
			if prev != "" {
				where = " (also defined in " + prev + ")"
			}
			errs.add(p.SourceFile, p.Metadata.Name, "", "metadata.name", fmt.Errorf("duplicate policy name%s", where))
		}
		names[p.Metadata.Name] = p.SourceFile
		static := checkPolicy(p, &errs)
		for i, sr := range static {
			ru := &p.Spec.Rules[i]
			sort.Slice(sr.labels, func(a, b int) bool { return sr.labels[a].key < sr.labels[b].key })
			r := rule{
				staticRule: sr,
				policy:     p.Metadata.Name,
				name:       ru.Name,
				dryRun:     p.Spec.Mode == ModeDryRun,
				order:      order,
			}
			order++
			if strings.TrimSpace(ru.When) != "" {
				c, ok := conds[ru.When]
				if !ok {
					var err error
					if c, err = compileCondition(env, ru.When); err != nil {
						errs.add(p.SourceFile, p.Metadata.Name, ru.Name, "when", err)
						continue
					}
					conds[ru.When] = c
				}
				r.cond = c
				for _, k := range c.headerKeys {
					keys[k] = true
				}
				s.allHeaders = s.allHeaders || c.allHeaders
				for _, k := range c.argKeys {
					argKeys[k] = true
				}
				s.allArgs = s.allArgs || c.allArgs
			}
			s.rules = append(s.rules, r)
		}
	}
	if err := errs.err(); err != nil {
		return nil, err
	}
	sort.SliceStable(s.rules, func(i, j int) bool {
		a, b := &s.rules[i], &s.rules[j]
		if a.dryRun != b.dryRun {
			return !a.dryRun
		}
		if ra, rb := effectRank(a.effect), effectRank(b.effect); ra != rb {
			return ra < rb
		}
		return a.order < b.order
	})
	s.firstDry = len(s.rules)
	for i := range s.rules {
		if s.rules[i].dryRun {
			s.firstDry = i
			break
		}
	}
	s.root = buildTrie(s.rules)
	for k := range keys {
		s.headerKeys = append(s.headerKeys, k)
	}
	sort.Strings(s.headerKeys)
	for k := range argKeys {
		s.argKeys = append(s.argKeys, k)
	}
	sort.Strings(s.argKeys)
	s.version = version(s.policies)
	return s, nil
}

// effectRank orders effects by strength: deny, step_up, allow.
func effectRank(e Effect) int {
	switch e {
	case EffectDeny:
		return 0
	case EffectStepUp:
		return 1
	default:
		return 2
	}
}

// version hashes the policies' sources in load order.
func version(ps []*Policy) string {
	h := sha256.New()
	h.Write([]byte("mandate.dev/v1 policy set\n"))
	var n [8]byte
	for _, p := range ps {
		src := p.Source
		if len(src) == 0 {
			// Built in code: hash a canonical encoding instead. JSON of
			// these types is deterministic (maps are sorted).
			src, _ = json.Marshal(struct {
				M Metadata
				S Spec
			}{p.Metadata, p.Spec})
		}
		binary.BigEndian.PutUint64(n[:], uint64(len(src)))
		h.Write(n[:])
		h.Write(src)
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// Version is a stable content hash of the set's sources (32 hex digits).
// Equal sources in equal order give equal versions. "" for a nil Set.
func (s *Set) Version() string {
	if s == nil {
		return ""
	}
	return s.version
}

// Policies returns the set's policies in load order. The caller must not
// modify them.
func (s *Set) Policies() []*Policy {
	if s == nil {
		return nil
	}
	return append([]*Policy(nil), s.policies...)
}

// Len returns the number of rules in the set, dry-run rules included.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return len(s.rules)
}

// HeaderKeys returns, sorted and lowercased, the names of the request
// headers conditions read by constant name. A decision cache keyed on the
// request's other attributes must add these headers to its key (all
// headers when ReadsAllHeaders is true).
func (s *Set) HeaderKeys() []string {
	if s == nil {
		return nil
	}
	return append([]string(nil), s.headerKeys...)
}

// ReadsAllHeaders reports whether some condition reads request headers
// in a way static analysis cannot pin to constant names (iterating the
// map, computed keys, passing it to a function).
func (s *Set) ReadsAllHeaders() bool {
	return s != nil && s.allHeaders
}

// MCPArgumentKeys returns, sorted, the MCP argument names conditions read
// by constant name (mcp.arguments.x, mcp.arguments["x"], has(...),
// "x" in mcp.arguments). A decision cache must add those arguments'
// values to its key (all arguments when ReadsAllMCPArguments is true).
func (s *Set) MCPArgumentKeys() []string {
	if s == nil {
		return nil
	}
	return append([]string(nil), s.argKeys...)
}

// ReadsAllMCPArguments reports whether some condition reads the MCP
// arguments in a way static analysis cannot pin to constant names.
func (s *Set) ReadsAllMCPArguments() bool {
	return s != nil && s.allArgs
}
