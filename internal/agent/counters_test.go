package agent

import (
	"context"
	"strings"
	"testing"

	"github.com/netdoctor/netdoctor/internal/testutil"
)

// TestAnalyzeComparesCountersWithThePreviousCheck runs the agent's analysis twice on a fresh
// namespace: the first judges the conntrack counters since boot, the second against the first
// collection (what an installed agent does between checks), and keeps only counters of it.
func TestAnalyzeComparesCountersWithThePreviousCheck(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "iptables")
	ns := testutil.NewNetns(t, "ctr")
	// A conntrack match in the namespace makes sure nf_conntrack is loaded (as kube-proxy's do).
	testutil.MustRun(t, ns, "iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
	a := &Agent{Node: "node-a", Netns: testutil.Path(ns)}
	req := &Request{ID: NewID(), Checks: []string{CheckNode}}
	reason := func() string {
		res := Analyze(context.Background(), a, req)
		for _, c := range res.Checks {
			if c.ID == "conntrack-insert-failed" {
				return string(c.Status) + ": " + c.Reason
			}
		}
		t.Fatalf("no conntrack-insert-failed check in %+v", res.Checks)
		return ""
	}
	first := reason()
	if strings.Contains(first, "between the snapshots") {
		t.Fatalf("first analysis compared with a snapshot it cannot have: %s", first)
	}
	if !strings.HasPrefix(first, "pass: ") {
		t.Fatalf("first analysis of a fresh namespace: %q, want pass", first)
	}
	second := reason()
	if !strings.HasPrefix(second, "pass: ") || !strings.Contains(second, "did not rise between the snapshots") {
		t.Fatalf("second analysis: %q, want a pass comparing with the first collection", second)
	}
	kept := a.swapCounters(a.prev)
	if kept == nil || kept.Conntrack == nil || len(kept.Links) == 0 || kept.Netfilter.IptablesNft != "" || len(kept.Routes) != 0 {
		t.Fatalf("kept %+v, want the counters only (conntrack, links' stats)", kept)
	}
}
