// Package report renders a finding.Report for people (text: the verdict
// first, one line per finding, evidence indented, colour on a terminal, a
// one-line summary last) and for programs (JSON, schema v1).
package report
