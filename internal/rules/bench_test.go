package rules_test

import (
	"testing"

	"github.com/netdoctor/netdoctor/internal/rules"
)

// BenchmarkEvaluate runs every node rule on the snapshot captured from the
// flannel-like lab node (kube-proxy's real rules loaded): the analysis half
// of node check, without collection.
func BenchmarkEvaluate(b *testing.B) {
	s := loadFixture(b, "flannel-clean")
	b.ReportAllocs()
	for b.Loop() {
		r := rules.Evaluate(&rules.Input{Node: s, Hints: labHints})
		if r.Summary.Critical+r.Summary.Warning != 0 {
			b.Fatal("clean fixture has findings")
		}
	}
}
