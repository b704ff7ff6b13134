package rules

import (
	"fmt"
	"sort"
	"strings"

	"github.com/netdoctor/netdoctor/internal/finding"
)

// Rule is one registered detector. Run must be a pure function of its Input.
type Rule struct {
	ID       string           // finding ID from FAULTS.md (a public contract)
	Severity finding.Severity // default severity of its findings
	Title    string           // one line: what the rule checks
	// Needs lists the snapshot sections the rule reads ("sysctls", "routes",
	// "netfilter"...). A section listed in the snapshot's Errors makes the
	// rule report skipped with the collector's reason.
	Needs []string
	Docs  string // where to read more about the fault
	Run   func(*Input) Result
}

// Result is how one run of a rule ended.
type Result struct {
	// Status is pass, fail, skipped or error. Left empty, it is fail when
	// a finding is a warning or critical, else pass (info findings are notes).
	Status   finding.Status
	Reason   string // why skipped/error, or a short note for pass
	Findings []finding.Finding
}

// Skip returns a skipped result with the reason.
func Skip(format string, args ...any) Result {
	return Result{Status: finding.Skipped, Reason: fmt.Sprintf(format, args...)}
}

// Errorf returns an error result with the reason.
func Errorf(format string, args ...any) Result {
	return Result{Status: finding.Error, Reason: fmt.Sprintf(format, args...)}
}

// Pass returns a pass result with an optional note.
func Pass(format string, args ...any) Result {
	return Result{Status: finding.Pass, Reason: fmt.Sprintf(format, args...)}
}

var registry = map[string]Rule{}

// Register adds a rule. It panics on a duplicate or malformed record: rules
// are registered from init and a mistake there is a programming error.
func Register(r Rule) {
	if r.ID == "" || r.Run == nil || r.Severity.Rank() == 0 {
		panic(fmt.Sprintf("rules: malformed rule %q", r.ID))
	}
	if _, dup := registry[r.ID]; dup {
		panic(fmt.Sprintf("rules: duplicate rule %q", r.ID))
	}
	registry[r.ID] = r
}

// All returns the registered rules sorted by ID.
func All() []Rule {
	out := make([]Rule, 0, len(registry))
	for _, r := range registry {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Lookup returns the registered rule with that ID.
func Lookup(id string) (Rule, bool) {
	r, ok := registry[id]
	return r, ok
}

// Evaluate runs every registered rule on the input and returns the report.
func Evaluate(in *Input) *finding.Report {
	f, c := RunRules(in, All())
	return finding.NewReport(f, c)
}

// RunRules runs the given rules and returns their findings and one check per
// rule. A rule whose needs are missing is skipped without running; a rule
// that panics is reported as an error check, not a crash.
func RunRules(in *Input, rs []Rule) ([]finding.Finding, []finding.Check) {
	var fs []finding.Finding
	cs := make([]finding.Check, 0, len(rs))
	node := in.NodeName()
	for _, r := range rs {
		res := runOne(in, r)
		for _, f := range res.Findings {
			if f.ID == "" {
				f.ID = r.ID
			}
			if f.Severity == "" {
				f.Severity = r.Severity
			}
			if f.Node == "" {
				f.Node = node
			}
			if f.Docs == "" {
				f.Docs = r.Docs
			}
			if f.Evidence == nil {
				f.Evidence = []string{}
			}
			fs = append(fs, f)
		}
		st, reason := res.Status, res.Reason
		if st == "" {
			// Fail when a finding is a fault (warning or critical); a rule
			// that only left a note (info) passed.
			st = finding.Pass
			for _, f := range res.Findings {
				sev := f.Severity
				if sev == "" {
					sev = r.Severity
				}
				if sev.Rank() >= finding.Warning.Rank() {
					st = finding.Fail
				}
			}
			if st == finding.Pass && len(res.Findings) > 0 && reason == "" {
				reason = "note only (info finding)"
			}
		}
		cs = append(cs, finding.Check{ID: r.ID, Node: node, Status: st, Reason: reason})
	}
	return fs, cs
}

func runOne(in *Input, r Rule) (res Result) {
	if in == nil || in.Node == nil {
		return Skip("no node snapshot")
	}
	for _, need := range r.Needs {
		if why, missing := in.missing(need); missing {
			return Skip("needs %s, which could not be collected: %s", need, why)
		}
	}
	defer func() {
		if p := recover(); p != nil {
			res = Errorf("rule %s failed on these facts: %v", r.ID, p)
		}
	}()
	return r.Run(in)
}

// missing reports whether a needed section is listed in the snapshot's
// Errors. A need matches an error key equal to it, an error key below it
// ("netfilter" covers "netfilter.iptables-nft") or above it ("sysctls"
// covers "sysctls net.ipv4.ip_forward").
func (in *Input) missing(need string) (string, bool) {
	var keys []string
	for k := range in.Node.Errors {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k == need || under(k, need) || under(need, k) {
			return k + ": " + in.Node.Errors[k], true
		}
	}
	return "", false
}

func under(k, section string) bool {
	if !strings.HasPrefix(k, section) || len(k) == len(section) {
		return false
	}
	switch k[len(section)] {
	case '.', ' ', '/', ':':
		return true
	}
	return false
}
