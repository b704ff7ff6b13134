// Package finding defines what netdoctor reports: findings (a fault found,
// with evidence and remediation), checks (what ran and how it ended) and the
// versioned report that carries them (schema v1 of ARCHITECTURE.md).
package finding

import (
	"slices"
	"sort"
)

// SchemaVersion is the version of the JSON report.
const SchemaVersion = "v1"

// Severity of a finding.
type Severity string

// Severities, from FAULTS.md.
const (
	Critical Severity = "critical" // breaks traffic now
	Warning  Severity = "warning"  // will break it under some condition
	Info     Severity = "info"     // context worth knowing
)

// Rank orders severities: critical 3, warning 2, info 1, unknown 0.
func (s Severity) Rank() int {
	switch s {
	case Critical:
		return 3
	case Warning:
		return 2
	case Info:
		return 1
	}
	return 0
}

// Finding is one fault found, with the facts that prove it.
type Finding struct {
	ID          string   `json:"id"`                // stable kebab-case ID from FAULTS.md
	Severity    Severity `json:"severity"`          // critical, warning or info
	Node        string   `json:"node,omitempty"`    // node it is about
	Subject     string   `json:"subject,omitempty"` // pod, service, interface... it is about
	Message     string   `json:"message"`           // one sentence a tired operator understands
	Evidence    []string `json:"evidence"`          // facts exactly as read
	Remediation string   `json:"remediation"`       // concrete command or change, and what to verify
	Docs        string   `json:"docs,omitempty"`    // where to read more
}

// Status of a check.
type Status string

// Check statuses. A check that could not run is skipped or error, never pass.
const (
	Pass    Status = "pass"
	Fail    Status = "fail"
	Skipped Status = "skipped"
	Error   Status = "error"
)

// Check records that a rule or probe ran (or could not) on a node.
type Check struct {
	ID     string `json:"id"`
	Node   string `json:"node,omitempty"`
	Status Status `json:"status"`
	Reason string `json:"reason,omitempty"`
}

// Summary counts findings and checks.
type Summary struct {
	Critical int `json:"critical"`
	Warning  int `json:"warning"`
	Info     int `json:"info"`
	Passed   int `json:"passed"`
	Failed   int `json:"failed"`
	Skipped  int `json:"skipped"`
	Errors   int `json:"errors"`
}

// Report is the v1 output of check, node check, analyze and diagnose.
type Report struct {
	SchemaVersion string    `json:"schemaVersion"`
	Summary       Summary   `json:"summary"`
	Findings      []Finding `json:"findings"`
	Checks        []Check   `json:"checks"`
	// Class and Hops are set by diagnose only.
	Class string `json:"class,omitempty"`
	Hops  []any  `json:"hops,omitempty"`
}

// NewReport builds a report with the summary computed and findings sorted by
// severity (critical first), then node, then ID.
func NewReport(findings []Finding, checks []Check) *Report {
	if findings == nil {
		findings = []Finding{}
	}
	if checks == nil {
		checks = []Check{}
	}
	sort.SliceStable(findings, func(i, j int) bool {
		a, b := findings[i], findings[j]
		if a.Severity.Rank() != b.Severity.Rank() {
			return a.Severity.Rank() > b.Severity.Rank()
		}
		if a.Node != b.Node {
			return a.Node < b.Node
		}
		return a.ID < b.ID
	})
	r := &Report{SchemaVersion: SchemaVersion, Findings: findings, Checks: checks}
	for _, f := range findings {
		switch f.Severity {
		case Critical:
			r.Summary.Critical++
		case Warning:
			r.Summary.Warning++
		case Info:
			r.Summary.Info++
		}
	}
	for _, c := range checks {
		switch c.Status {
		case Pass:
			r.Summary.Passed++
		case Fail:
			r.Summary.Failed++
		case Skipped:
			r.Summary.Skipped++
		case Error:
			r.Summary.Errors++
		}
	}
	return r
}

// ExitCode is 1 when the report has a critical or warning finding, else 0.
func (r *Report) ExitCode() int {
	if r.Summary.Critical+r.Summary.Warning > 0 {
		return 1
	}
	return 0
}

// ProblemIDs returns the IDs of the report's critical and warning findings, sorted (an ID
// found twice is there twice).
func (r *Report) ProblemIDs() []string {
	var ids []string
	for _, f := range r.Findings {
		if f.Severity == Critical || f.Severity == Warning {
			ids = append(ids, f.ID)
		}
	}
	slices.Sort(ids)
	return ids
}

// Check returns the report's check with the given ID, and whether there is one.
func (r *Report) Check(id string) (Check, bool) {
	for _, c := range r.Checks {
		if c.ID == id {
			return c, true
		}
	}
	return Check{}, false
}
