package nodecheck_test

import (
	"context"
	"testing"

	"github.com/netdoctor/netdoctor/internal/collect"
	"github.com/netdoctor/netdoctor/internal/rules"
)

// BenchmarkNodeCheck is node check's work on the flannel-like lab node (two
// pods, a peer, kube-proxy's real rules): collect every section (netlink,
// /proc, iptables-save x4, nft -j, ipset, processes) then run every rule.
// The rule half alone is internal/rules' BenchmarkEvaluate.
func BenchmarkNodeCheck(b *testing.B) {
	lab := newFlannelLab(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		snap, err := collect.Collect(ctx, collect.Options{Netns: lab.node, NodeName: "node-1", RootDir: lab.rootDir})
		if err != nil {
			b.Fatal(err)
		}
		r := rules.Evaluate(&rules.Input{Node: snap})
		if r.Summary.Critical+r.Summary.Warning != 0 {
			b.Fatalf("healthy lab node has findings: %+v", r.Findings)
		}
	}
}
