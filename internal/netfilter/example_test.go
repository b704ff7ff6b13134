package netfilter_test

import (
	"fmt"
	"net/netip"
	"os"
	"sort"

	"github.com/netdoctor/netdoctor/internal/netfilter"
)

// Trace a pod's connection to a ClusterIP through kube-proxy's rules: one
// outcome per endpoint, each with the rules it hit.
func ExampleTrace() {
	dump, err := os.ReadFile("testdata/kubeproxy-like-iptables-nft.save")
	if err != nil {
		panic(err)
	}
	rs, err := netfilter.ParseIptablesSave(dump)
	if err != nil {
		panic(err)
	}
	node := netip.MustParseAddr("198.19.255.1")
	env := netfilter.Env{
		LocalAddrs: []netip.Addr{node},
		IfaceAddrs: map[string][]netip.Addr{"eth0": {node}},
	}
	pkt := netfilter.Packet{
		Src: netip.MustParseAddr("198.18.1.5"), Dst: netip.MustParseAddr("198.19.0.10"),
		Proto: "udp", SrcPort: 40000, DstPort: 53, InIface: "cni0", OutIface: "eth0",
	}
	outs, err := netfilter.Trace([]*netfilter.Ruleset{rs}, pkt, netfilter.FlowInbound, env)
	if err != nil {
		panic(err)
	}
	sort.Slice(outs, func(i, j int) bool { return outs[i].Packet.Dst.Less(outs[j].Packet.Dst) })
	for _, o := range outs {
		fmt.Printf("%s p=%.2f %s\n", o.Verdict, o.Probability, o.Packet)
		for _, h := range o.Hits {
			if h.Hook == "prerouting" {
				fmt.Printf("  %s\n", h)
			}
		}
	}
	// Output:
	// accept p=0.50 udp 198.18.1.5:40000 -> 198.18.1.2:53
	//   iptables nat/PREROUTING#1: jump KUBE-SERVICES
	//   iptables nat/KUBE-SERVICES#2: jump KUBE-SVC-TCOU7JCQXEZGVUNU
	//   iptables nat/KUBE-SVC-TCOU7JCQXEZGVUNU#2: jump KUBE-SEP-5RFCDDV7NXXHNCRE (probability 0.5)
	//   iptables nat/KUBE-SEP-5RFCDDV7NXXHNCRE#2: DNAT 198.18.1.2:53
	// accept p=0.50 udp 198.18.1.5:40000 -> 198.18.2.2:53
	//   iptables nat/PREROUTING#1: jump KUBE-SERVICES
	//   iptables nat/KUBE-SERVICES#2: jump KUBE-SVC-TCOU7JCQXEZGVUNU
	//   iptables nat/KUBE-SVC-TCOU7JCQXEZGVUNU#3: jump KUBE-SEP-A2EZFHC4QNMBWOYQ
	//   iptables nat/KUBE-SEP-A2EZFHC4QNMBWOYQ#2: DNAT 198.18.2.2:53
}
