package netfilter

import (
	"math"
	"net/netip"
	"reflect"
	"testing"
)

// The lab's real kube-proxy v1.37 dumps (iptables and nftables modes of the
// same cluster): pods 198.18.128.0/17, services 198.19.0.0/16, node 198.18.0.12.
var labEnv = Env{
	LocalAddrs: []netip.Addr{addr("198.18.0.12")},
	IfaceAddrs: map[string][]netip.Addr{"eth0": {addr("198.18.0.12")}},
}

func TestRealKubeProxyDumpsClusterIP(t *testing.T) {
	for _, name := range []string{"kube-proxy-iptables.save", "kube-proxy-nftables.json"} {
		t.Run(name, func(t *testing.T) {
			rs := loadRuleset(t, name)
			pkt := Packet{Src: addr("198.18.128.5"), Dst: addr("198.19.0.80"), Proto: "tcp", SrcPort: 40000, DstPort: 80, InIface: "cni0", OutIface: "flannel.1"}
			outs, err := Trace([]*Ruleset{rs}, pkt, FlowInbound, labEnv)
			if err != nil {
				t.Fatal(err)
			}
			want := []string{"accept 198.18.128.10:8080", "accept 198.18.129.10:8080", "accept 198.18.130.10:8080"}
			if got := destinations(outs); !reflect.DeepEqual(got, want) {
				t.Fatalf("outcomes = %v, want %v", got, want)
			}
			for _, o := range outs {
				if math.Abs(o.Probability-1.0/3) > 1e-6 {
					t.Errorf("probability %v, want ~1/3", o.Probability)
				}
				if o.Packet.Src != pkt.Src {
					t.Errorf("in-cluster source was masqueraded to %s", o.Packet.Src)
				}
			}
		})
	}
}

func TestRealKubeProxyServicesAgree(t *testing.T) {
	ipt, err := KubeProxyServices(loadRuleset(t, "kube-proxy-iptables.save"))
	if err != nil {
		t.Fatal(err)
	}
	nft, err := KubeProxyServices(loadRuleset(t, "kube-proxy-nftables.json"))
	if err != nil {
		t.Fatal(err)
	}
	fp := func(s []KubeService) map[string]string {
		m := map[string]string{}
		for _, x := range s {
			m[x.Key()] = x.Name + " " + x.Fingerprint()
		}
		return m
	}
	if len(ipt) != 7 {
		t.Fatalf("iptables mode: %d services, want 7: %+v", len(ipt), ipt)
	}
	if !reflect.DeepEqual(fp(ipt), fp(nft)) {
		t.Fatalf("fingerprints differ between modes:\niptables %v\nnftables %v", fp(ipt), fp(nft))
	}
}

// TestRealKubeProxyDumpsCases traces the other service paths through both
// real dumps; no outcome may be unknown.
func TestRealKubeProxyDumpsCases(t *testing.T) {
	env := Env{
		LocalAddrs: []netip.Addr{addr("198.18.0.12"), addr("198.18.128.1")},
		IfaceAddrs: map[string][]netip.Addr{"eth0": {addr("198.18.0.12")}, "cni0": {addr("198.18.128.1")}},
	}
	for _, name := range []string{"kube-proxy-iptables.save", "kube-proxy-nftables.json"} {
		rs := loadRuleset(t, name)
		for _, tc := range []struct {
			name string
			pkt  Packet
			want []string
		}{
			{"NodePort from another node is DNATed and masqueraded",
				Packet{Src: addr("198.18.0.13"), Dst: addr("198.18.0.12"), Proto: "tcp", SrcPort: 40000, DstPort: 30080, InIface: "eth0", OutIface: "eth0"},
				[]string{"accept 198.18.0.12:40000>198.18.128.20:8080 p=1.000"}},
			{"service without endpoints is rejected",
				Packet{Src: addr("198.18.128.5"), Dst: addr("198.19.0.82"), Proto: "tcp", SrcPort: 40000, DstPort: 80, InIface: "cni0", OutIface: "eth0"},
				[]string{"reject 198.18.128.5:40000>198.19.0.82:80 p=1.000"}},
			{"ClusterIP from outside the cluster CIDR is masqueraded",
				Packet{Src: addr("198.18.0.13"), Dst: addr("198.19.0.1"), Proto: "tcp", SrcPort: 40000, DstPort: 443, InIface: "eth0", OutIface: "eth0"},
				[]string{"accept 198.18.0.12:40000>198.18.0.2:6443 p=1.000"}},
		} {
			t.Run(name+"/"+tc.name, func(t *testing.T) {
				outs, err := Trace([]*Ruleset{rs}, tc.pkt, FlowInbound, env)
				if err != nil {
					t.Fatal(err)
				}
				if got := summaries(outs); !reflect.DeepEqual(got, tc.want) {
					t.Errorf("got %q, want %q", got, tc.want)
					for _, o := range outs {
						t.Logf("%s: %s\n%s", o.Verdict, o.Reason, hitActions(o))
					}
				}
			})
		}
	}
}
