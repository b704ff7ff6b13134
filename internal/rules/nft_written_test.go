package rules

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/netdoctor/netdoctor/internal/collect"
	"github.com/netdoctor/netdoctor/internal/netfilter"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

// A rule written with nft into iptables-nft's own filter table is printed
// wrongly by iptables-nft-save (`ip saddr @blk drop` becomes `-A INPUT -j
// DROP`). The tracer must use the nft dump of that table, not the save.
func TestNftWrittenRuleInIptablesTableTracedFromNftDump(t *testing.T) {
	testutil.RequireProgram(t, "iptables-nft")
	testutil.RequireProgram(t, "nft")
	ns := testutil.NewNetns(t, "nftw")
	testutil.MustRun(t, ns, "iptables-nft", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
	testutil.MustRun(t, ns, "nft", "add", "set", "ip", "filter", "blk", "{ type ipv4_addr; }")
	testutil.MustRun(t, ns, "nft", "add", "element", "ip", "filter", "blk", "{ 198.18.77.9 }")
	testutil.MustRun(t, ns, "nft", "add", "rule", "ip", "filter", "INPUT", "ip", "saddr", "@blk", "drop")
	save := testutil.MustRun(t, ns, "iptables-nft-save")
	if !strings.Contains(save, "-A INPUT -j DROP") {
		t.Logf("iptables-nft-save no longer mistranslates the rule (good), got:\n%s", save)
	}

	snap, err := collect.Collect(context.Background(), collect.Options{Netns: ns, Sections: []string{"netfilter"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := snap.Netfilter.NftWrittenTables; len(got) != 1 || got[0] != "ip filter" {
		t.Fatalf("NftWrittenTables = %v, want [ip filter]", got)
	}
	in := &Input{Node: snap}
	v := in.netfilterView()
	if len(v.Problems) > 0 {
		t.Fatalf("problems: %v", v.Problems)
	}
	trace := func(src string) netfilter.Verdict {
		t.Helper()
		pkt := netfilter.Packet{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr("198.18.77.1"),
			Proto: "udp", SrcPort: 40000, DstPort: 8472, InIface: "eth0", CTState: "NEW"}
		outs, err := netfilter.Trace(v.Rulesets, pkt, netfilter.FlowInput, v.Env)
		if err != nil {
			t.Fatal(err)
		}
		if len(outs) != 1 {
			t.Fatalf("%d outcomes", len(outs))
		}
		return outs[0].Verdict
	}
	if got := trace("198.18.77.2"); got != netfilter.VerdictAccept {
		t.Errorf("source outside the set: verdict %v, want accept (the save's `-A INPUT -j DROP` was traced)", got)
	}
	if got := trace("198.18.77.9"); got != netfilter.VerdictDrop {
		t.Errorf("source in the set: verdict %v, want drop", got)
	}
}
