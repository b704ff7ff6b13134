package netfilter

import (
	"fmt"
	"strings"
	"testing"
)

// TestDstIndexKeepsOrder builds a chain whose host-destination rules are
// interrupted by rules without a destination and checks that the index
// visits exactly the rules a linear scan could match, in order.
func TestDstIndexKeepsOrder(t *testing.T) {
	var b strings.Builder
	b.WriteString("*nat\n:PREROUTING ACCEPT [0:0]\n:X - [0:0]\n:HIT - [0:0]\n")
	b.WriteString("-A PREROUTING -j X\n")
	for i := 0; i < 40; i++ {
		switch i {
		case 10, 30:
			// a rule without -d inside the runs: never skipped
			fmt.Fprintf(&b, "-A X -p udp -m udp --dport %d -j HIT\n", 1000+i)
		case 20:
			// a prefix destination (not a single address) ends a run too
			b.WriteString("-A X -d 198.19.0.0/24 -p tcp -m tcp --dport 9 -j HIT\n")
		default:
			fmt.Fprintf(&b, "-A X -d 198.19.0.%d/32 -p tcp -m tcp --dport 80 -j HIT\n", i%7+1)
		}
	}
	b.WriteString("-A HIT -j RETURN\nCOMMIT\n")
	rs, err := ParseIptablesSave([]byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	x := rs.Table("", "nat").Chain("X")
	if x.index == nil {
		t.Fatal("chain X not indexed")
	}
	unindexed, _ := ParseIptablesSave([]byte(b.String()))
	unindexed.Table("", "nat").Chain("X").index = nil
	for _, pkt := range []Packet{
		{Src: addr("198.18.1.5"), Dst: addr("198.19.0.3"), Proto: "tcp", SrcPort: 1, DstPort: 80},
		{Src: addr("198.18.1.5"), Dst: addr("198.19.0.3"), Proto: "tcp", SrcPort: 1, DstPort: 9},
		{Src: addr("198.18.1.5"), Dst: addr("198.19.0.9"), Proto: "udp", SrcPort: 1, DstPort: 1030},
		{Src: addr("198.18.1.5"), Dst: addr("198.19.1.1"), Proto: "tcp", SrcPort: 1, DstPort: 80},
	} {
		a, _ := Trace([]*Ruleset{rs}, pkt, FlowInput, Env{})
		l, _ := Trace([]*Ruleset{unindexed}, pkt, FlowInput, Env{})
		if hitActions(a[0]) != hitActions(l[0]) {
			t.Errorf("%v: indexed hits\n%s\nlinear hits\n%s", pkt, hitActions(a[0]), hitActions(l[0]))
		}
	}
	// the 80/tcp packet to .3 must hit every rule for .3 (positions 4, 11, ...)
	a, _ := Trace([]*Ruleset{rs}, Packet{Src: addr("198.18.1.5"), Dst: addr("198.19.0.3"), Proto: "tcp", SrcPort: 1, DstPort: 80}, FlowInput, Env{})
	if n := strings.Count(hitActions(a[0]), "nat/X#"); n != 5 {
		t.Errorf("%d hits in X, want 5:\n%s", n, hitActions(a[0]))
	}
}
