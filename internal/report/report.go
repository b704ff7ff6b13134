package report

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"golang.org/x/term"

	"github.com/netdoctor/netdoctor/internal/finding"
)

// Options control the text rendering.
type Options struct {
	// Color turns on ANSI colours (see ColorFor).
	Color bool
	// Verbose also lists the checks that passed.
	Verbose bool
}

// ColorFor reports whether output to w should be coloured: only when w is a
// terminal and NO_COLOR is not set (https://no-color.org).
func ColorFor(w io.Writer) bool {
	if v, ok := os.LookupEnv("NO_COLOR"); ok && v != "" {
		return false
	}
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	return term.IsTerminal(int(f.Fd()))
}

const (
	ansiReset  = "\x1b[0m"
	ansiBold   = "\x1b[1m"
	ansiRed    = "\x1b[31m"
	ansiYellow = "\x1b[33m"
	ansiBlue   = "\x1b[34m"
	ansiGreen  = "\x1b[32m"
	ansiDim    = "\x1b[2m"
)

type painter bool

func (p painter) paint(code, s string) string {
	if !p {
		return s
	}
	return code + s + ansiReset
}

func (p painter) severity(s finding.Severity) string {
	tag := fmt.Sprintf("%-10s", "["+string(s)+"]")
	switch s {
	case finding.Critical:
		return p.paint(ansiBold+ansiRed, tag)
	case finding.Warning:
		return p.paint(ansiYellow, tag)
	case finding.Info:
		return p.paint(ansiBlue, tag)
	}
	return tag
}

// Nodes returns the distinct nodes of the report's findings and checks.
func Nodes(r *finding.Report) []string {
	seen := map[string]bool{}
	var out []string
	for _, c := range r.Checks {
		if c.Node != "" && !seen[c.Node] {
			seen[c.Node] = true
			out = append(out, c.Node)
		}
	}
	for _, f := range r.Findings {
		if f.Node != "" && !seen[f.Node] {
			seen[f.Node] = true
			out = append(out, f.Node)
		}
	}
	sort.Strings(out)
	return out
}

func where(r *finding.Report) string {
	ns := Nodes(r)
	switch len(ns) {
	case 0:
		return ""
	case 1:
		return " on " + ns[0]
	}
	return fmt.Sprintf(" on %d nodes", len(ns))
}

func plural(n int, one, many string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, one)
	}
	return fmt.Sprintf("%d %s", n, many)
}

// Verdict is the first line of the text report, without colour: e.g.
// "✗ 2 critical, 1 warning on node-1" or
// "✓ no faults found on node-1 (14 checks passed, 2 skipped)".
func Verdict(r *finding.Report) string {
	s := r.Summary
	if s.Critical+s.Warning == 0 {
		extra := []string{plural(s.Passed, "check passed", "checks passed")}
		if s.Skipped > 0 {
			extra = append(extra, fmt.Sprintf("%d skipped", s.Skipped))
		}
		if s.Errors > 0 {
			extra = append(extra, plural(s.Errors, "could not run", "could not run"))
		}
		if s.Info > 0 {
			extra = append(extra, plural(s.Info, "note", "notes"))
		}
		return fmt.Sprintf("✓ no faults found%s (%s)", where(r), strings.Join(extra, ", "))
	}
	var parts []string
	if s.Critical > 0 {
		parts = append(parts, fmt.Sprintf("%d critical", s.Critical))
	}
	if s.Warning > 0 {
		parts = append(parts, plural(s.Warning, "warning", "warnings"))
	}
	if s.Info > 0 {
		parts = append(parts, fmt.Sprintf("%d info", s.Info))
	}
	return fmt.Sprintf("✗ %s%s", strings.Join(parts, ", "), where(r))
}

// SummaryLine is the last line of the text report: every count in one line,
// e.g. "node-1: 2 critical, 1 warning, 0 info | 16 checks: 12 passed,
// 2 failed, 2 skipped, 0 errors".
func SummaryLine(r *finding.Report) string {
	s := r.Summary
	total := s.Passed + s.Failed + s.Skipped + s.Errors
	w := strings.TrimPrefix(where(r), " on ")
	if w == "" {
		w = "summary"
	}
	return fmt.Sprintf("%s: %d critical, %d warning, %d info | %d checks: %d passed, %d failed, %d skipped, %d errors",
		w, s.Critical, s.Warning, s.Info, total, s.Passed, s.Failed, s.Skipped, s.Errors)
}

// Text writes the report for people.
func Text(w io.Writer, r *finding.Report, o Options) error {
	p := painter(o.Color)
	var b strings.Builder
	v := Verdict(r)
	if r.Summary.Critical+r.Summary.Warning > 0 {
		b.WriteString(p.paint(ansiBold+ansiRed, v))
	} else {
		b.WriteString(p.paint(ansiBold+ansiGreen, v))
	}
	b.WriteString("\n")
	// Column width for the IDs.
	width := 0
	for _, f := range r.Findings {
		width = max(width, len(f.ID))
	}
	for _, f := range r.Findings {
		b.WriteString("\n")
		fmt.Fprintf(&b, "%s %-*s  %s: %s\n", p.severity(f.Severity), width, f.ID, f.Node, f.Message)
		if len(f.Evidence) > 0 {
			b.WriteString(p.paint(ansiDim, "    evidence:") + "\n")
			for _, e := range f.Evidence {
				fmt.Fprintf(&b, "      %s\n", e)
			}
		}
		if f.Remediation != "" {
			fmt.Fprintf(&b, "    %s %s\n", p.paint(ansiBold, "fix:"), f.Remediation)
		}
		if f.Docs != "" {
			fmt.Fprintf(&b, "    %s %s\n", p.paint(ansiDim, "docs:"), f.Docs)
		}
	}
	var notRun, passed []finding.Check
	for _, c := range r.Checks {
		switch c.Status {
		case finding.Skipped, finding.Error:
			notRun = append(notRun, c)
		case finding.Pass:
			passed = append(passed, c)
		}
	}
	idw := 0
	for _, c := range r.Checks {
		idw = max(idw, len(c.ID))
	}
	if len(notRun) > 0 {
		b.WriteString("\n" + p.paint(ansiDim, "not checked:") + "\n")
		for _, c := range notRun {
			fmt.Fprintf(&b, "  %-7s %-*s  %s: %s\n", c.Status, idw, c.ID, c.Node, c.Reason)
		}
	}
	if o.Verbose && len(passed) > 0 {
		b.WriteString("\n" + p.paint(ansiDim, "passed:") + "\n")
		for _, c := range passed {
			if c.Reason != "" {
				fmt.Fprintf(&b, "  pass    %-*s  %s: %s\n", idw, c.ID, c.Node, c.Reason)
			} else {
				fmt.Fprintf(&b, "  pass    %-*s  %s\n", idw, c.ID, c.Node)
			}
		}
	}
	b.WriteString("\n" + SummaryLine(r) + "\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// JSON writes the report as indented JSON (schema v1).
func JSON(w io.Writer, r *finding.Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(r)
}

// Write renders the report in the named format ("text" or "json").
func Write(w io.Writer, r *finding.Report, format string, o Options) error {
	switch format {
	case "json":
		return JSON(w, r)
	case "text", "":
		return Text(w, r, o)
	}
	return fmt.Errorf("unknown output format %q: use text or json", format)
}
