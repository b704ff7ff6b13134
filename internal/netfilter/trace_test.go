package netfilter

import (
	"fmt"
	"math"
	"net/netip"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// The synthetic node of the kubeproxy-like and firewall fixtures: pods
// 198.18.0.0/16 (this node's pods on cni0 198.18.1.0/24), services
// 198.19.0.0/17, underlay eth0 198.19.255.1, flannel.1 198.18.1.0.
func nodeEnv(t testing.TB) Env {
	sets, err := ParseIpsetSave(readFixture(t, "ipsets.save"))
	if err != nil {
		t.Fatal(err)
	}
	return Env{
		LocalAddrs: []netip.Addr{addr("198.19.255.1"), addr("198.18.1.1"), addr("198.18.1.0"), addr("fd00:198:19:ff::1")},
		IfaceAddrs: map[string][]netip.Addr{
			"eth0":      {addr("198.19.255.1"), addr("fd00:198:19:ff::1")},
			"cni0":      {addr("198.18.1.1")},
			"flannel.1": {addr("198.18.1.0")},
		},
		Ipsets: sets,
	}
}

// summary renders an outcome as "verdict src:sport>dst:dport p=0.333".
func summary(o Outcome) string {
	return fmt.Sprintf("%s %s>%s p=%.3f", o.Verdict, netip.AddrPortFrom(o.Packet.Src, o.Packet.SrcPort),
		netip.AddrPortFrom(o.Packet.Dst, o.Packet.DstPort), o.Probability)
}

func summaries(outs []Outcome) []string {
	s := make([]string, 0, len(outs))
	for _, o := range outs {
		s = append(s, summary(o))
	}
	sort.Strings(s)
	return s
}

type traceCase struct {
	name  string
	files []string
	pkt   Packet
	flow  Flow
	want  []string
	check func(t *testing.T, outs []Outcome)
}

func runTraceCases(t *testing.T, cases []traceCase) {
	t.Helper()
	env := nodeEnv(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var rss []*Ruleset
			for _, f := range tc.files {
				rss = append(rss, loadRuleset(t, f))
			}
			outs, err := Trace(rss, tc.pkt, tc.flow, env)
			if err != nil {
				t.Fatal(err)
			}
			if got := summaries(outs); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("outcomes:\n got %q\nwant %q", got, tc.want)
				for _, o := range outs {
					t.Logf("%s (%s)", summary(o), o.Reason)
					for _, h := range o.Hits {
						t.Logf("    %s | %s", h, h.Text)
					}
				}
			}
			if p := totalProbability(outs); math.Abs(p-1) > 1e-9 {
				t.Errorf("probabilities sum to %v", p)
			}
			if tc.check != nil {
				tc.check(t, outs)
			}
		})
	}
}

func hitActions(o Outcome) string {
	var b strings.Builder
	for _, h := range o.Hits {
		fmt.Fprintf(&b, "%s/%s#%d %s\n", h.Table, h.Chain, h.Position, h.Action)
	}
	return b.String()
}

func wantHit(t *testing.T, o Outcome, chain string, position int, actionPrefix string) {
	t.Helper()
	for _, h := range o.Hits {
		if h.Chain == chain && h.Position == position && strings.HasPrefix(h.Action, actionPrefix) {
			return
		}
	}
	t.Errorf("no hit %s#%d %q in:\n%s", chain, position, actionPrefix, hitActions(o))
}

func pod(dst string, proto string, dport uint16) Packet {
	return Packet{Src: addr("198.18.1.5"), Dst: addr(dst), Proto: proto, SrcPort: 40000, DstPort: dport, InIface: "cni0", OutIface: "flannel.1"}
}

func outside(dst string, proto string, dport uint16) Packet {
	return Packet{Src: addr("198.19.200.5"), Dst: addr(dst), Proto: proto, SrcPort: 40000, DstPort: dport, InIface: "eth0", OutIface: "flannel.1"}
}

var kubeProxyLike = []string{"kubeproxy-like-iptables-nft.save", "kubeproxy-like-iptables-legacy.save", "kubeproxy-like-nftables.json"}

// TestTraceKubeProxy runs the same service cases over kube-proxy's
// iptables layout (both backends) and its nftables layout.
func TestTraceKubeProxy(t *testing.T) {
	var cases []traceCase
	for _, f := range kubeProxyLike {
		nft := strings.HasSuffix(f, ".json")
		cases = append(cases,
			traceCase{
				name: f + "/clusterIP DNAT to the one endpoint", files: []string{f},
				pkt: pod("198.19.0.1", "tcp", 443), flow: FlowInbound,
				// the endpoint is the node itself: routed to INPUT after DNAT
				want: []string{"accept 198.18.1.5:40000>198.19.255.1:6443 p=1.000"},
				check: func(t *testing.T, outs []Outcome) {
					if got := strings.Join(outs[0].Hooks, ","); got != "prerouting,input" {
						t.Errorf("hooks %s, want prerouting,input", got)
					}
				},
			},
			traceCase{
				name: f + "/statistic fan-out over 3 endpoints", files: []string{f},
				pkt: pod("198.19.0.20", "tcp", 80), flow: FlowInbound,
				want: []string{
					"accept 198.18.1.5:40000>198.18.1.10:8080 p=0.333",
					"accept 198.18.1.5:40000>198.18.1.11:8080 p=0.333",
					"accept 198.18.1.5:40000>198.18.2.10:8080 p=0.333",
				},
				check: func(t *testing.T, outs []Outcome) {
					for _, o := range outs {
						if o.Packet.Mark != 0 {
							t.Errorf("in-cluster source got masquerade mark 0x%x", o.Packet.Mark)
						}
						last := ""
						for _, h := range o.Hits {
							if h.Hook == "prerouting" {
								last = h.Action
							}
						}
						if !strings.Contains(strings.ToLower(last), "dnat") {
							t.Errorf("last prerouting hit %q is not the DNAT", last)
						}
					}
				},
			},
			traceCase{
				name: f + "/off-cluster source is marked then masqueraded", files: []string{f},
				pkt: outside("198.19.0.10", "udp", 53), flow: FlowInbound,
				want: []string{
					"accept 198.18.1.0:40000>198.18.1.2:53 p=0.500",
					"accept 198.18.1.0:40000>198.18.2.2:53 p=0.500",
				},
				check: func(t *testing.T, outs []Outcome) {
					for _, o := range outs {
						if o.Packet.Mark&0x4000 != 0 {
							t.Errorf("mark 0x4000 not cleared after masquerade: 0x%x", o.Packet.Mark)
						}
						chain := "KUBE-MARK-MASQ"
						if nft {
							chain = "mark-for-masquerade"
						}
						if !o.HitChain(chain) {
							t.Errorf("no hit in %s:\n%s", chain, hitActions(o))
						}
						h := o.LastHit()
						if h.Hook != "postrouting" || !strings.Contains(strings.ToLower(h.Action), "masquerade") {
							t.Errorf("last hit %v is not the masquerade", h)
						}
					}
				},
			},
			traceCase{
				name: f + "/NodePort via the node's local address", files: []string{f},
				pkt: outside("198.19.255.1", "tcp", 30080), flow: FlowInbound,
				want: []string{
					"accept 198.18.1.0:40000>198.18.1.10:8080 p=0.333",
					"accept 198.18.1.0:40000>198.18.1.11:8080 p=0.333",
					"accept 198.18.1.0:40000>198.18.2.10:8080 p=0.333",
				},
				check: func(t *testing.T, outs []Outcome) {
					if nft {
						return
					}
					wantHit(t, outs[0], "KUBE-SERVICES", 4, "jump KUBE-NODEPORTS")
					wantHit(t, outs[0], "KUBE-NODEPORTS", 1, "jump KUBE-EXT-")
				},
			},
			traceCase{
				name: f + "/NodePort port on a non-local address is not captured", files: []string{f},
				pkt: outside("198.19.255.7", "tcp", 30080), flow: FlowForward,
				want: []string{"accept 198.19.200.5:40000>198.19.255.7:30080 p=1.000"},
			},
			traceCase{
				name: f + "/service without endpoints is rejected", files: []string{f},
				pkt: pod("198.19.0.30", "tcp", 80), flow: FlowInbound,
				want: []string{"reject 198.18.1.5:40000>198.19.0.30:80 p=1.000"},
			},
			traceCase{
				name: f + "/established connection skips nat", files: []string{f},
				pkt: func() Packet { p := pod("198.19.0.20", "tcp", 80); p.CTState = CTEstablished; return p }(), flow: FlowForward,
				want: []string{"accept 198.18.1.5:40000>198.19.0.20:80 p=1.000"},
			},
			traceCase{
				name: f + "/host to clusterIP (OUTPUT) is masqueraded to the out interface", files: []string{f},
				pkt:  Packet{Src: addr("198.19.255.1"), Dst: addr("198.19.0.10"), Proto: "udp", SrcPort: 5353, DstPort: 53, OutIface: "flannel.1"},
				flow: FlowOutput,
				want: []string{
					"accept 198.18.1.0:5353>198.18.1.2:53 p=0.500",
					"accept 198.18.1.0:5353>198.18.2.2:53 p=0.500",
				},
			},
		)
	}
	runTraceCases(t, cases)
}

var firewalls = []string{"firewall-iptables-nft.save", "firewall-iptables-legacy.save"}

func TestTraceIptablesFirewall(t *testing.T) {
	var cases []traceCase
	for _, f := range firewalls {
		fs := []string{f}
		cases = append(cases,
			traceCase{
				name: f + "/VXLAN dropped in INPUT", files: fs,
				pkt: Packet{Src: addr("198.19.255.2"), Dst: addr("198.19.255.1"), Proto: "udp", SrcPort: 51000, DstPort: 8472, InIface: "eth0"}, flow: FlowInput,
				want: []string{"drop 198.19.255.2:51000>198.19.255.1:8472 p=1.000"},
				check: func(t *testing.T, outs []Outcome) {
					h := outs[0].LastHit()
					if h.Table != "filter" || h.Chain != "OVERLAY" || h.Position != 1 || !strings.Contains(h.Text, "block vxlan") || h.Hook != "input" {
						t.Errorf("drop evidence %+v", h)
					}
					wantHit(t, outs[0], "INPUT", 5, "jump OVERLAY")
				},
			},
			traceCase{
				name: f + "/statistic nth enumerates both branches", files: fs,
				pkt: Packet{Src: addr("198.19.255.2"), Dst: addr("198.19.255.1"), Proto: "udp", SrcPort: 51000, DstPort: 4789, InIface: "eth0"}, flow: FlowInput,
				want: []string{"accept 198.19.255.2:51000>198.19.255.1:4789 p=0.500", "drop 198.19.255.2:51000>198.19.255.1:4789 p=0.500"},
			},
			traceCase{
				name: f + "/FORWARD policy DROP", files: fs,
				pkt: Packet{Src: addr("198.19.200.5"), Dst: addr("198.18.1.5"), Proto: "tcp", SrcPort: 40000, DstPort: 80, InIface: "eth0", OutIface: "cni0"}, flow: FlowForward,
				want: []string{"drop 198.19.200.5:40000>198.18.1.5:80 p=1.000"},
				check: func(t *testing.T, outs []Outcome) {
					h := outs[0].LastHit()
					if h.Chain != "FORWARD" || h.Position != 0 || h.Action != "policy DROP" {
						t.Errorf("last hit %+v, want the FORWARD policy", h)
					}
					if !strings.Contains(outs[0].Reason, "policy DROP of filter/FORWARD") {
						t.Errorf("reason %q", outs[0].Reason)
					}
				},
			},
			traceCase{
				name: f + "/pod traffic forwarded and masqueraded", files: fs,
				pkt: Packet{Src: addr("198.18.1.5"), Dst: addr("198.19.200.5"), Proto: "tcp", SrcPort: 40000, DstPort: 443, InIface: "cni0", OutIface: "eth0"}, flow: FlowForward,
				want: []string{"accept 198.19.255.1:40000>198.19.200.5:443 p=1.000"},
			},
			traceCase{
				name: f + "/goto then RETURN returns to the caller of the goto-ing chain", files: fs,
				pkt: Packet{Src: addr("198.19.255.1"), Dst: addr("198.19.200.5"), Proto: "tcp", SrcPort: 40000, DstPort: 7001, OutIface: "eth0"}, flow: FlowOutput,
				want: []string{"drop 198.19.255.1:40000>198.19.200.5:7001 p=1.000"},
				check: func(t *testing.T, outs []Outcome) {
					wantHit(t, outs[0], "CALLER", 1, "goto GOTO-TARGET")
					wantHit(t, outs[0], "GOTO-TARGET", 1, "RETURN")
					wantHit(t, outs[0], "OUTPUT", 2, "DROP")
				},
			},
			traceCase{
				name: f + "/jump then RETURN continues in the calling chain", files: fs,
				pkt: Packet{Src: addr("198.19.255.1"), Dst: addr("198.19.200.5"), Proto: "tcp", SrcPort: 40000, DstPort: 7002, OutIface: "eth0"}, flow: FlowOutput,
				want: []string{"reject 198.19.255.1:40000>198.19.200.5:7002 p=1.000"},
				check: func(t *testing.T, outs []Outcome) {
					wantHit(t, outs[0], "JUMP-TARGET", 1, "RETURN")
					wantHit(t, outs[0], "CALLER", 3, "REJECT")
				},
			},
			traceCase{
				name: f + "/end of a user chain returns implicitly", files: fs,
				pkt: Packet{Src: addr("198.19.255.1"), Dst: addr("198.19.200.5"), Proto: "tcp", SrcPort: 40000, DstPort: 7003, OutIface: "eth0"}, flow: FlowOutput,
				want: []string{"accept 198.19.255.1:40000>198.19.200.5:7003 p=1.000"},
			},
			traceCase{
				name: f + "/unsupported match gives unknown naming the rule", files: fs,
				pkt: Packet{Src: addr("198.19.255.1"), Dst: addr("198.19.200.5"), Proto: "tcp", SrcPort: 40000, DstPort: 7100, OutIface: "eth0"}, flow: FlowOutput,
				want: []string{"unknown 198.19.255.1:40000>198.19.200.5:7100 p=1.000"},
				check: func(t *testing.T, outs []Outcome) {
					o := outs[0]
					h := o.LastHit()
					if h.Chain != "OUTPUT" || h.Position != 3 || !strings.Contains(h.Text, "--uid-owner 1000") {
						t.Errorf("unknown names %+v", h)
					}
					if !strings.Contains(o.Reason, "unsupported match -m owner") || !strings.Contains(o.Reason, "filter/OUTPUT#3") {
						t.Errorf("reason %q", o.Reason)
					}
				},
			},
			traceCase{
				name: f + "/a definite mismatch beats an unsupported match", files: fs,
				pkt: Packet{Src: addr("198.19.255.1"), Dst: addr("198.19.200.5"), Proto: "tcp", SrcPort: 40000, DstPort: 7101, OutIface: "eth0"}, flow: FlowOutput,
				want: []string{"accept 198.19.255.1:40000>198.19.200.5:7101 p=1.000"},
			},
			traceCase{
				name: f + "/addrtype --limit-iface-out", files: fs,
				pkt: Packet{Src: addr("198.19.255.1"), Dst: addr("198.18.1.1"), Proto: "tcp", SrcPort: 40000, DstPort: 7200, OutIface: "cni0"}, flow: FlowOutput,
				want: []string{"drop 198.19.255.1:40000>198.18.1.1:7200 p=1.000"},
			},
			traceCase{
				name: f + "/addrtype --limit-iface-out other interface", files: fs,
				pkt: Packet{Src: addr("198.19.255.1"), Dst: addr("198.18.1.1"), Proto: "tcp", SrcPort: 40000, DstPort: 7200, OutIface: "eth0"}, flow: FlowOutput,
				want: []string{"accept 198.19.255.1:40000>198.18.1.1:7200 p=1.000"},
			},
			traceCase{
				name: f + "/ipset hash:net source", files: fs,
				pkt: Packet{Src: addr("198.18.200.9"), Dst: addr("198.19.255.1"), Proto: "tcp", SrcPort: 40000, DstPort: 9200, InIface: "eth0"}, flow: FlowInput,
				want:  []string{"accept 198.18.200.9:40000>198.19.255.1:9200 p=1.000"},
				check: func(t *testing.T, outs []Outcome) { wantHit(t, outs[0], "INPUT", 7, "ACCEPT") },
			},
			traceCase{
				name: f + "/ipset hash:net non-member", files: fs,
				pkt: Packet{Src: addr("198.18.202.9"), Dst: addr("198.19.255.1"), Proto: "tcp", SrcPort: 40000, DstPort: 9200, InIface: "eth0"}, flow: FlowInput,
				want: []string{"accept 198.18.202.9:40000>198.19.255.1:9200 p=1.000"},
				check: func(t *testing.T, outs []Outcome) {
					if h := outs[0].LastHit(); h.Position != 0 {
						t.Errorf("non-member matched %+v", h)
					}
				},
			},
			traceCase{
				name: f + "/ipset hash:ip,port dst,dst", files: fs,
				pkt: Packet{Src: addr("198.19.255.2"), Dst: addr("198.19.255.1"), Proto: "udp", SrcPort: 40000, DstPort: 9401, InIface: "eth0"}, flow: FlowInput,
				want:  []string{"accept 198.19.255.2:40000>198.19.255.1:9401 p=1.000"},
				check: func(t *testing.T, outs []Outcome) { wantHit(t, outs[0], "INPUT", 8, "ACCEPT") },
			},
			traceCase{
				name: f + "/MARK and CONNMARK carry to filter", files: fs,
				pkt: Packet{Src: addr("198.19.100.2"), Dst: addr("198.19.255.1"), Proto: "tcp", SrcPort: 40000, DstPort: 9100, InIface: "eth1"}, flow: FlowInput,
				want: []string{"accept 198.19.100.2:40000>198.19.255.1:9100 p=1.000"},
				check: func(t *testing.T, outs []Outcome) {
					if p := outs[0].Packet; p.Mark != 0x100 || p.CTMark != 0x100 {
						t.Errorf("mark 0x%x ctmark 0x%x, want 0x100 both", p.Mark, p.CTMark)
					}
					wantHit(t, outs[0], "INPUT", 3, "ACCEPT")
				},
			},
			traceCase{
				name: f + "/MARK set, or, and, xor", files: fs,
				pkt: Packet{Src: addr("198.19.255.1"), Dst: addr("198.19.200.5"), Proto: "tcp", SrcPort: 40000, DstPort: 7300, OutIface: "eth0", Mark: 0xff00}, flow: FlowOutput,
				want: []string{"accept 198.19.255.1:40000>198.19.200.5:7300 p=1.000"},
				check: func(t *testing.T, outs []Outcome) {
					if m := outs[0].Packet.Mark; m != 0x36 {
						t.Errorf("mark 0x%x, want 0x36", m)
					}
				},
			},
			traceCase{
				name: f + "/NOTRACK in raw skips nat", files: fs,
				pkt: Packet{Src: addr("198.19.255.2"), Dst: addr("198.19.255.1"), Proto: "udp", SrcPort: 40000, DstPort: 6081, InIface: "eth0"}, flow: FlowInput,
				want: []string{"accept 198.19.255.2:40000>198.19.255.1:6081 p=1.000"},
				check: func(t *testing.T, outs []Outcome) {
					if s := outs[0].Packet.CTState; s != CTUntracked {
						t.Errorf("state %s, want UNTRACKED", s)
					}
				},
			},
			traceCase{
				name: f + "/REDIRECT to the in interface address", files: fs,
				pkt: Packet{Src: addr("198.19.255.2"), Dst: addr("198.19.255.1"), Proto: "tcp", SrcPort: 40000, DstPort: 8080, InIface: "eth0"}, flow: FlowInput,
				want: []string{"accept 198.19.255.2:40000>198.19.255.1:18080 p=1.000"},
			},
			traceCase{
				name: f + "/icmp echo after the overlay chain", files: fs,
				pkt: Packet{Src: addr("198.19.255.2"), Dst: addr("198.19.255.1"), Proto: "icmp", ICMPType: 8, InIface: "eth0"}, flow: FlowInput,
				want:  []string{"accept 198.19.255.2:0>198.19.255.1:0 p=1.000"},
				check: func(t *testing.T, outs []Outcome) { wantHit(t, outs[0], "INPUT", 6, "ACCEPT") },
			},
			traceCase{
				name: f + "/LOG continues, then REJECT", files: fs,
				pkt: Packet{Src: addr("198.19.255.2"), Dst: addr("198.19.255.1"), Proto: "tcp", SrcPort: 40000, DstPort: 9300, InIface: "eth0"}, flow: FlowInput,
				want: []string{"reject 198.19.255.2:40000>198.19.255.1:9300 p=1.000"},
				check: func(t *testing.T, outs []Outcome) {
					wantHit(t, outs[0], "INPUT", 9, "LOG")
					wantHit(t, outs[0], "INPUT", 10, "REJECT tcp-reset")
				},
			},
			traceCase{
				name: f + "/multiport range", files: fs,
				pkt: Packet{Src: addr("198.19.255.2"), Dst: addr("198.19.255.1"), Proto: "tcp", SrcPort: 40000, DstPort: 10255, InIface: "eth0"}, flow: FlowInput,
				want:  []string{"accept 198.19.255.2:40000>198.19.255.1:10255 p=1.000"},
				check: func(t *testing.T, outs []Outcome) { wantHit(t, outs[0], "INPUT", 4, "ACCEPT") },
			},
			traceCase{
				name: f + "/established accepted early", files: fs,
				pkt: Packet{Src: addr("198.19.255.2"), Dst: addr("198.19.255.1"), Proto: "udp", SrcPort: 40000, DstPort: 8472, InIface: "eth0", CTState: CTEstablished}, flow: FlowInput,
				want: []string{"accept 198.19.255.2:40000>198.19.255.1:8472 p=1.000"},
			},
		)
	}
	cases = append(cases,
		traceCase{
			name: "ip6tables/DNAT to a bracketed IPv6 endpoint", files: []string{"firewall-ip6tables.save"},
			pkt: Packet{Src: addr("fd00:198:18:2::5"), Dst: addr("fd00:198:19::10"), Proto: "tcp", SrcPort: 40000, DstPort: 80, InIface: "eth0", OutIface: "cni0"}, flow: FlowForward,
			want: []string{"accept [fd00:198:18:2::5]:40000>[fd00:198:18:1::10]:8080 p=1.000"},
		},
		traceCase{
			name: "ip6tables/VXLAN dropped", files: []string{"firewall-ip6tables.save"},
			pkt: Packet{Src: addr("fd00:198:19:ff::2"), Dst: addr("fd00:198:19:ff::1"), Proto: "udp", SrcPort: 40000, DstPort: 8472, InIface: "eth0"}, flow: FlowInput,
			want: []string{"drop [fd00:198:19:ff::2]:40000>[fd00:198:19:ff::1]:8472 p=1.000"},
		},
		traceCase{
			name: "ip6tables/icmpv6 echo", files: []string{"firewall-ip6tables.save"},
			pkt: Packet{Src: addr("fd00:198:19:ff::2"), Dst: addr("fd00:198:19:ff::1"), Proto: "icmpv6", ICMPType: 128, InIface: "eth0"}, flow: FlowInput,
			want:  []string{"accept [fd00:198:19:ff::2]:0>[fd00:198:19:ff::1]:0 p=1.000"},
			check: func(t *testing.T, outs []Outcome) { wantHit(t, outs[0], "INPUT", 2, "ACCEPT") },
		},
		traceCase{
			name: "ip6tables rules do not see IPv4", files: []string{"firewall-ip6tables.save"},
			pkt: Packet{Src: addr("198.19.255.2"), Dst: addr("198.19.255.1"), Proto: "udp", SrcPort: 40000, DstPort: 8472, InIface: "eth0"}, flow: FlowInput,
			want: []string{"accept 198.19.255.2:40000>198.19.255.1:8472 p=1.000"},
		},
	)
	runTraceCases(t, cases)
}

func TestTraceNftFirewall(t *testing.T) {
	fs := []string{"firewall-nftables.json"}
	in := func(src string, proto string, dport uint16) Packet {
		return Packet{Src: addr(src), Dst: addr("198.19.255.1"), Proto: proto, SrcPort: 40000, DstPort: dport, InIface: "eth0"}
	}
	out := func(dport uint16) Packet {
		return Packet{Src: addr("198.19.255.1"), Dst: addr("198.19.200.5"), Proto: "tcp", SrcPort: 40000, DstPort: dport, OutIface: "eth0"}
	}
	fwd := func(dport uint16) Packet {
		return Packet{Src: addr("198.19.200.5"), Dst: addr("198.18.1.5"), Proto: "tcp", SrcPort: 40000, DstPort: dport, InIface: "eth0", OutIface: "cni0"}
	}
	runTraceCases(t, []traceCase{
		{name: "VXLAN dropped in the input hook", files: fs, pkt: in("198.19.255.2", "udp", 8472), flow: FlowInput,
			want: []string{"drop 198.19.255.2:40000>198.19.255.1:8472 p=1.000"},
			check: func(t *testing.T, outs []Outcome) {
				h := outs[0].LastHit()
				if h.Backend != BackendNftables || h.Family != "inet" || h.Table != "fw" || h.Chain != "input" || h.Position != 5 || !strings.Contains(h.Text, `comment "block vxlan"`) {
					t.Errorf("evidence %+v", h)
				}
			}},
		{name: "anonymous set", files: fs, pkt: in("198.19.255.2", "udp", 6081), flow: FlowInput,
			want: []string{"drop 198.19.255.2:40000>198.19.255.1:6081 p=1.000"}},
		{name: "interval set prefix", files: fs, pkt: in("198.18.50.77", "tcp", 22), flow: FlowInput,
			want: []string{"drop 198.18.50.77:40000>198.19.255.1:22 p=1.000"}},
		{name: "interval set range", files: fs, pkt: in("198.18.60.5", "tcp", 22), flow: FlowInput,
			want: []string{"drop 198.18.60.5:40000>198.19.255.1:22 p=1.000"}},
		{name: "outside the interval set range", files: fs, pkt: in("198.18.60.10", "tcp", 22), flow: FlowInput,
			want:  []string{"accept 198.18.60.10:40000>198.19.255.1:22 p=1.000"},
			check: func(t *testing.T, outs []Outcome) { wantHit(t, outs[0], "input", 4, "accept") }},
		{name: "concatenated set", files: fs, pkt: in("198.19.255.2", "tcp", 6443), flow: FlowInput,
			want:  []string{"accept 198.19.255.2:40000>198.19.255.1:6443 p=1.000"},
			check: func(t *testing.T, outs []Outcome) { wantHit(t, outs[0], "input", 4, "accept") }},
		{name: "icmp type by name", files: fs, pkt: Packet{Src: addr("198.19.255.2"), Dst: addr("198.19.255.1"), Proto: "icmp", ICMPType: 8, InIface: "eth0"}, flow: FlowInput,
			want:  []string{"accept 198.19.255.2:0>198.19.255.1:0 p=1.000"},
			check: func(t *testing.T, outs []Outcome) { wantHit(t, outs[0], "input", 7, "accept") }},
		{name: "mark bitwise match", files: fs, pkt: func() Packet { p := in("198.19.255.2", "tcp", 9500); p.Mark = 0x10100; return p }(), flow: FlowInput,
			want: []string{"accept 198.19.255.2:40000>198.19.255.1:9500 p=1.000"}},
		{name: "reject with tcp reset", files: fs, pkt: in("198.19.255.2", "tcp", 9500), flow: FlowInput,
			want: []string{"reject 198.19.255.2:40000>198.19.255.1:9500 p=1.000"}},
		{name: "forward policy drop", files: fs, pkt: fwd(80), flow: FlowForward,
			want: []string{"drop 198.19.200.5:40000>198.18.1.5:80 p=1.000"},
			check: func(t *testing.T, outs []Outcome) {
				if h := outs[0].LastHit(); h.Action != "policy drop" || h.Chain != "forward" {
					t.Errorf("last hit %+v", h)
				}
			}},
		{name: "goto then return goes back past the goto-ing chain", files: fs, pkt: fwd(7002), flow: FlowForward,
			want: []string{"drop 198.19.200.5:40000>198.18.1.5:7002 p=1.000"},
			check: func(t *testing.T, outs []Outcome) {
				wantHit(t, outs[0], "fwd-check", 1, "goto fwd-goto")
				wantHit(t, outs[0], "fwd-goto", 1, "return")
			}},
		{name: "jump then return continues in the caller", files: fs, pkt: fwd(7003), flow: FlowForward,
			want:  []string{"reject 198.19.200.5:40000>198.18.1.5:7003 p=1.000"},
			check: func(t *testing.T, outs []Outcome) { wantHit(t, outs[0], "fwd-check", 3, "reject") }},
		{name: "ct mark accepted", files: fs, pkt: func() Packet { p := fwd(80); p.CTMark = 0x10; return p }(), flow: FlowForward,
			want: []string{"accept 198.19.200.5:40000>198.18.1.5:80 p=1.000"}},
		{name: "iifname wildcard and masquerade", files: fs,
			pkt:  Packet{Src: addr("198.18.1.5"), Dst: addr("198.19.200.5"), Proto: "tcp", SrcPort: 40000, DstPort: 443, InIface: "cni0", OutIface: "eth0"},
			flow: FlowForward, want: []string{"accept 198.19.255.1:40000>198.19.200.5:443 p=1.000"}},
		{name: "unknown expression names the rule", files: fs, pkt: out(7100), flow: FlowOutput,
			want: []string{"unknown 198.19.255.1:40000>198.19.200.5:7100 p=1.000"},
			check: func(t *testing.T, outs []Outcome) {
				o := outs[0]
				if h := o.LastHit(); h.Chain != "output" || h.Position != 1 || !strings.Contains(o.Reason, "meta skuid") {
					t.Errorf("unknown evidence %+v reason %q", h, o.Reason)
				}
			}},
		{name: "meta mark set and ct mark set meta mark", files: fs, pkt: out(7200), flow: FlowOutput,
			want: []string{"accept 198.19.255.1:40000>198.19.200.5:7200 p=1.000"},
			check: func(t *testing.T, outs []Outcome) {
				if p := outs[0].Packet; p.Mark != 0x20 || p.CTMark != 0x20 {
					t.Errorf("mark 0x%x ctmark 0x%x", p.Mark, p.CTMark)
				}
			}},
		{name: "numgen match enumerates", files: fs, pkt: out(7201), flow: FlowOutput,
			want: []string{"accept 198.19.255.1:40000>198.19.200.5:7201 p=0.750", "drop 198.19.255.1:40000>198.19.200.5:7201 p=0.250"}},
		{name: "dnat with fib daddr type local then forward", files: fs,
			pkt:  Packet{Src: addr("198.19.200.5"), Dst: addr("198.19.255.1"), Proto: "tcp", SrcPort: 40000, DstPort: 8080, InIface: "eth0", OutIface: "cni0"},
			flow: FlowInbound, want: []string{"drop 198.19.200.5:40000>198.18.1.10:80 p=1.000"},
			check: func(t *testing.T, outs []Outcome) {
				if got := strings.Join(outs[0].Hooks, ","); got != "prerouting,forward" {
					t.Errorf("hooks %s", got)
				}
			}},
	})
}

// TestTraceSeveralRulesets checks that every ruleset sees the packet: an
// accept in one base chain does not stop the next, a drop does.
func TestTraceSeveralRulesets(t *testing.T) {
	runTraceCases(t, []traceCase{
		{name: "kube-proxy nft accepts, the nft firewall drops VXLAN", files: []string{"kubeproxy-like-nftables.json", "firewall-nftables.json"},
			pkt: Packet{Src: addr("198.19.255.2"), Dst: addr("198.19.255.1"), Proto: "udp", SrcPort: 40000, DstPort: 8472, InIface: "eth0"}, flow: FlowInput,
			want: []string{"drop 198.19.255.2:40000>198.19.255.1:8472 p=1.000"}},
		{name: "nft kube-proxy DNATs, iptables FORWARD policy drops", files: []string{"kubeproxy-like-nftables.json", "firewall-iptables-nft.save"},
			pkt: outside("198.19.0.10", "udp", 53), flow: FlowInbound,
			want: []string{"drop 198.19.200.5:40000>198.18.1.2:53 p=0.500", "drop 198.19.200.5:40000>198.18.2.2:53 p=0.500"},
			check: func(t *testing.T, outs []Outcome) {
				for _, o := range outs {
					if h := o.LastHit(); h.Backend != BackendIptables || h.Action != "policy DROP" {
						t.Errorf("last hit %+v", h)
					}
				}
			}},
		{name: "the first nat binding wins", files: []string{"kubeproxy-like-iptables-nft.save", "kubeproxy-like-nftables.json"},
			pkt: pod("198.19.0.1", "tcp", 443), flow: FlowInbound,
			want: []string{"accept 198.18.1.5:40000>198.19.255.1:6443 p=1.000"}},
	})
}

func TestTraceBadPacket(t *testing.T) {
	rs := loadRuleset(t, "firewall-iptables-nft.save")
	for _, tc := range []struct {
		name string
		pkt  Packet
		flow Flow
		want string
	}{
		{"no source", Packet{Dst: addr("198.19.255.1"), Proto: "tcp"}, FlowInput, "needs a source"},
		{"mixed families", Packet{Src: addr("fd00::1"), Dst: addr("198.19.255.1"), Proto: "tcp"}, FlowInput, "different families"},
		{"bad proto", Packet{Src: addr("198.19.255.2"), Dst: addr("198.19.255.1"), Proto: "gopher"}, FlowInput, "unknown protocol"},
		{"no proto", Packet{Src: addr("198.19.255.2"), Dst: addr("198.19.255.1")}, FlowInput, "needs a protocol"},
		{"bad state", Packet{Src: addr("198.19.255.2"), Dst: addr("198.19.255.1"), Proto: "udp", CTState: "OLD"}, FlowInput, "conntrack state"},
		{"bad flow", Packet{Src: addr("198.19.255.2"), Dst: addr("198.19.255.1"), Proto: "udp"}, Flow(42), "unknown flow"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Trace([]*Ruleset{rs}, tc.pkt, tc.flow, Env{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

// TestTraceUnknownWithoutEnv: what the tracer cannot know (ipset
// contents, interface addresses) makes an unknown verdict, never a guess.
func TestTraceUnknownWithoutEnv(t *testing.T) {
	rs := loadRuleset(t, "firewall-iptables-nft.save")
	for _, tc := range []struct {
		name, reason string
		pkt          Packet
		flow         Flow
	}{
		{"ipset not collected", `contents of ipset "allowed-src" not known`,
			Packet{Src: addr("198.18.200.9"), Dst: addr("198.19.255.1"), Proto: "tcp", SrcPort: 1, DstPort: 9200, InIface: "eth0"}, FlowInput},
		{"masquerade without interface address", `MASQUERADE: address of out interface "eth0" not known`,
			Packet{Src: addr("198.18.1.5"), Dst: addr("198.19.200.5"), Proto: "tcp", SrcPort: 1, DstPort: 443, InIface: "cni0", OutIface: "eth0"}, FlowForward},
	} {
		t.Run(tc.name, func(t *testing.T) {
			outs, err := Trace([]*Ruleset{rs}, tc.pkt, tc.flow, Env{})
			if err != nil {
				t.Fatal(err)
			}
			if len(outs) != 1 || outs[0].Verdict != VerdictUnknown || !strings.Contains(outs[0].Reason, tc.reason) {
				t.Fatalf("outcomes %+v, want one unknown with %q", outs, tc.reason)
			}
		})
	}
}

// TestTraceNATMapNumgen traces nft's "dnat to numgen random mod N map {...}" (captured from
// nft 1.x in a namespace): one branch per numgen value, each with its probability and the map
// key in the hit; a numgen value the map lacks is no NAT (the packet goes on untranslated).
func TestTraceNATMapNumgen(t *testing.T) {
	fs := []string{"natmap-numgen-nftables.json"}
	runTraceCases(t, []traceCase{
		{name: "three backends", files: fs, pkt: pod("198.19.0.20", "tcp", 80), flow: FlowInbound,
			want: []string{"accept 198.18.1.5:40000>198.18.1.2:8080 p=0.333", "accept 198.18.1.5:40000>198.18.2.2:8080 p=0.333", "accept 198.18.1.5:40000>198.18.3.2:8080 p=0.333"},
			check: func(t *testing.T, outs []Outcome) {
				for _, o := range outs {
					if h := o.Hits[len(o.Hits)-1]; !strings.Contains(h.Action, "map key") {
						t.Errorf("hit %+v does not name the map key", h)
					}
				}
			}},
		{name: "a numgen value without a map entry is not translated", files: fs, pkt: pod("198.19.0.21", "tcp", 80), flow: FlowInbound,
			want: []string{"accept 198.18.1.5:40000>198.18.1.2:8080 p=0.500", "accept 198.18.1.5:40000>198.19.0.21:80 p=0.500"}},
	})
}
