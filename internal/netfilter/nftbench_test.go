package netfilter

import (
	"fmt"
	"strings"
	"testing"
)

// genKubeProxyNftJSON renders services in kube-proxy's v1.33+ nftables
// layout as `nft -j list ruleset` prints it (service-ips verdict map, one
// service chain per service port with a numgen dnat map).
func genKubeProxyNftJSON(svcs []genService) []byte {
	var b strings.Builder
	b.WriteString(`{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}, {"table": {"family": "ip", "name": "kube-proxy", "handle": 1}}`)
	h := 2
	chain := func(name, extra string) {
		fmt.Fprintf(&b, `, {"chain": {"family": "ip", "table": "kube-proxy", "name": %q, "handle": %d%s}}`, name, h, extra)
		h++
	}
	rule := func(c, expr string) {
		fmt.Fprintf(&b, `, {"rule": {"family": "ip", "table": "kube-proxy", "chain": %q, "handle": %d, "expr": [%s]}}`, c, h, expr)
		h++
	}
	b.WriteString(`, {"map": {"family": "ip", "name": "service-ips", "table": "kube-proxy", "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 2, "map": "verdict", "elem": [`)
	for i, s := range svcs {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, `[{"concat": [%q, %q, %d]}, {"goto": {"target": "service-%s"}}]`, s.clusterIP, s.proto, s.port, s.svcChain)
	}
	b.WriteString(`]}}`)
	chain("nat-prerouting", `, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"`)
	chain("nat-postrouting", `, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"`)
	chain("services", "")
	chain("masquerading", "")
	rule("nat-prerouting", `{"jump": {"target": "services"}}`)
	rule("nat-postrouting", `{"jump": {"target": "masquerading"}}`)
	rule("services", `{"vmap": {"key": {"concat": [{"payload": {"protocol": "ip", "field": "daddr"}}, {"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]}, "data": "@service-ips"}}`)
	rule("masquerading", `{"match": {"op": "!=", "left": {"&": [{"meta": {"key": "mark"}}, 16384]}, "right": 0}}, {"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"^": [{"meta": {"key": "mark"}}, 16384]}}}, {"masquerade": {"flags": "fully-random"}}`)
	for _, s := range svcs {
		chain("service-"+s.svcChain, "")
	}
	for _, s := range svcs {
		var m strings.Builder
		for j, ep := range s.endpoints {
			if j > 0 {
				m.WriteString(", ")
			}
			fmt.Fprintf(&m, `[%d, {"concat": [%q, %d]}]`, j, ep.Addr(), ep.Port())
		}
		rule("service-"+s.svcChain, fmt.Sprintf(`{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": %q}}, {"dnat": {"family": "ip", "addr": {"map": {"key": {"numgen": {"mode": "random", "mod": %d, "offset": 0}}, "data": {"set": [%s]}}}}}`, s.proto, len(s.endpoints), m.String()))
	}
	b.WriteString("]}\n")
	return []byte(b.String())
}

func TestGeneratedKubeProxyNftJSON(t *testing.T) {
	svcs := genKubeProxyServices(30, 3)
	rs, err := ParseNftJSON(genKubeProxyNftJSON(svcs))
	if err != nil {
		t.Fatal(err)
	}
	got, err := KubeProxyServices(rs)
	if err != nil || len(got) != 30 || len(got[0].Endpoints) != 3 {
		t.Fatalf("%d services %v", len(got), err)
	}
	outs, err := Trace([]*Ruleset{rs}, Packet{Src: addr("198.18.255.5"), Dst: svcs[4].clusterIP, Proto: svcs[4].proto, SrcPort: 1, DstPort: svcs[4].port, InIface: "cni0", OutIface: "eth0"}, FlowForward, Env{})
	if err != nil || len(outs) != 3 {
		t.Fatalf("%d outcomes %v", len(outs), err)
	}
}

// BenchmarkTraceAllServicesNft is BenchmarkTraceAllServices over kube-proxy's
// nftables layout (nft -j JSON), 10,000 services x 5 endpoints.
func BenchmarkTraceAllServicesNft(b *testing.B) {
	svcs := genKubeProxyServices(10000, 5)
	dump := genKubeProxyNftJSON(svcs)
	b.SetBytes(int64(len(dump)))
	b.ReportAllocs()
	cpu0 := cpuTime()
	for b.Loop() {
		rs, err := ParseNftJSON(dump)
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		for _, s := range svcs {
			outs, err := Trace([]*Ruleset{rs}, Packet{Src: addr("198.18.255.5"), Dst: s.clusterIP, Proto: s.proto, SrcPort: 1, DstPort: s.port, InIface: "cni0", OutIface: "eth0"}, FlowForward, Env{})
			if err != nil {
				b.Fatal(err)
			}
			n += len(outs)
		}
		if n != 50000 {
			b.Fatalf("%d outcomes", n)
		}
	}
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N)/1e6, "cpu-ms/op")
}
