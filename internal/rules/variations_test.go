package rules_test

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/netdoctor/netdoctor/internal/facts"
	"github.com/netdoctor/netdoctor/internal/finding"
	"github.com/netdoctor/netdoctor/internal/rules"
)

func readTestdata(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// kubeProxyProcess is kube-proxy as the lab's kube-proxy DaemonSet starts it
// (kubeadm-shaped: --config plus --hostname-override), with the config file
// the lab writes (testdata/kube-proxy-config*.conf, from
// controlplane.KubeProxyConfig).
func kubeProxyProcess(t testing.TB, config string, extra ...string) facts.Process {
	cmd := append([]string{"/usr/local/bin/kube-proxy", "--config=/var/lib/kube-proxy/config.conf", "--hostname-override=node-1"}, extra...)
	p := facts.Process{PID: 4242, Name: "kube-proxy", Cmdline: cmd, SameNetns: true}
	if config != "" {
		p.Config = map[string]string{"/var/lib/kube-proxy/config.conf": readTestdata(t, config)}
	}
	return p
}

// nftKubeProxy replaces the iptables rules by the real nftables-mode dump of
// kube-proxy, edited by edit (nil: as captured).
func nftKubeProxy(t testing.TB, s *facts.NodeSnapshot, edit func(rule map[string]any) (keep bool)) {
	t.Helper()
	doc := readTestdata(t, "kube-proxy-nftables.json")
	if edit != nil {
		var d struct {
			Nftables []map[string]any `json:"nftables"`
		}
		if err := json.Unmarshal([]byte(doc), &d); err != nil {
			t.Fatal(err)
		}
		var out []map[string]any
		for _, o := range d.Nftables {
			if r, ok := o["rule"].(map[string]any); ok && !edit(r) {
				continue
			}
			out = append(out, o)
		}
		d.Nftables = out
		b, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		doc = string(b)
	}
	s.Netfilter = facts.Netfilter{NftJSON: doc}
}

func isMasqRule(r map[string]any) bool {
	c, _ := r["comment"].(string)
	return c == "masquerade clusterIP traffic from outside cluster"
}

func TestRuleVariations(t *testing.T) {
	type tc struct {
		name    string
		mutate  func(t testing.TB, s *facts.NodeSnapshot)
		before  func(t testing.TB, s *facts.NodeSnapshot) // mutates a copy of the clean fixture as the earlier snapshot
		hints   *rules.Hints
		want    []string         // warning and critical IDs
		sev     finding.Severity // severity of want[0], when set
		inMsg   string           // text the first finding's message or evidence must contain
		checkID string           // a check whose status must be checkStatus
		status  finding.Status
	}
	tests := []tc{
		{name: "conntrack 50% full", mutate: func(_ testing.TB, s *facts.NodeSnapshot) { s.Conntrack.Count = s.Conntrack.Max / 2 }},
		{name: "conntrack 80% full", mutate: func(_ testing.TB, s *facts.NodeSnapshot) { s.Conntrack.Count = s.Conntrack.Max * 8 / 10 },
			want: []string{"conntrack-table-full"}, sev: finding.Warning, inMsg: "80% full"},
		{name: "conntrack 95% full", mutate: func(_ testing.TB, s *facts.NodeSnapshot) { s.Conntrack.Count = s.Conntrack.Max * 95 / 100 },
			want: []string{"conntrack-table-full"}, sev: finding.Critical, inMsg: "net.netfilter.nf_conntrack_max = 262144"},
		{name: "conntrack insert_failed since boot", mutate: func(_ testing.TB, s *facts.NodeSnapshot) { s.Conntrack.PerCPU[0].InsertFailed = 7 },
			want: []string{"conntrack-insert-failed"}, sev: finding.Warning, inMsg: "insert_failed 7"},
		{name: "conntrack insert_failed rising", mutate: func(_ testing.TB, s *facts.NodeSnapshot) {
			s.Conntrack.PerCPU[0].InsertFailed = 12
			s.Conntrack.PerCPU[1].Drop = 3
		},
			before: func(_ testing.TB, s *facts.NodeSnapshot) { s.Conntrack.PerCPU[0].InsertFailed = 7 },
			want:   []string{"conntrack-insert-failed"}, inMsg: "rose by 5 and drop by 3"},
		{name: "conntrack insert_failed not rising", mutate: func(_ testing.TB, s *facts.NodeSnapshot) { s.Conntrack.PerCPU[0].InsertFailed = 7 },
			before:  func(_ testing.TB, s *facts.NodeSnapshot) { s.Conntrack.PerCPU[0].InsertFailed = 7 },
			checkID: "conntrack-insert-failed", status: finding.Pass},
		{name: "softnet drops rising", mutate: func(_ testing.TB, s *facts.NodeSnapshot) { s.Softnet[0].Dropped = 40 },
			before: func(_ testing.TB, s *facts.NodeSnapshot) { s.Softnet[0].Dropped = 10 },
			want:   []string{"nic-queue-drops"}, inMsg: "softnet cpu 0: dropped 30"},
		{name: "uplink rx drops rising", mutate: func(_ testing.TB, s *facts.NodeSnapshot) { linkNamed(s, "eth0").Stats.RxDropped += 100 },
			before: func(testing.TB, *facts.NodeSnapshot) {}, want: []string{"nic-queue-drops"}, inMsg: "eth0: rx_dropped 100"},
		{name: "ephemeral ports all used", mutate: func(_ testing.TB, s *facts.NodeSnapshot) {
			s.SocketStats = &facts.SocketStats{PerDestination: []facts.DestinationCount{{Proto: "tcp", LocalIP: "198.18.0.1", Remote: "198.19.0.80:80", Count: 28232}}}
		}, want: []string{"ephemeral-ports-exhausted"}, sev: finding.Critical},
		{name: "kube-proxy with clusterCIDR in its config", mutate: func(t testing.TB, s *facts.NodeSnapshot) {
			s.Processes = []facts.Process{kubeProxyProcess(t, "kube-proxy-config.conf")}
		}, checkID: "kube-proxy-cluster-cidr-missing", status: finding.Pass},
		{name: "kube-proxy config without clusterCIDR", mutate: func(t testing.TB, s *facts.NodeSnapshot) {
			s.Processes = []facts.Process{kubeProxyProcess(t, "kube-proxy-config-no-cidr.conf")}
		}, want: []string{"kube-proxy-cluster-cidr-missing"}, sev: finding.Warning, inMsg: `config /var/lib/kube-proxy/config.conf: clusterCIDR: ""`},
		{name: "kube-proxy ipvs without cluster-cidr", mutate: func(t testing.TB, s *facts.NodeSnapshot) {
			p := kubeProxyProcess(t, "")
			p.Cmdline = []string{"kube-proxy", "--kubeconfig=/var/lib/kube-proxy/kubeconfig.conf", "--proxy-mode=ipvs"}
			s.Processes = []facts.Process{p}
		}, want: []string{"kube-proxy-cluster-cidr-missing"}, sev: finding.Critical, inMsg: "IPVS mode"},
		{name: "kube-proxy --cluster-cidr is the service CIDR", mutate: func(t testing.TB, s *facts.NodeSnapshot) {
			p := kubeProxyProcess(t, "")
			p.Cmdline = []string{"kube-proxy", "--kubeconfig=/k", "--cluster-cidr=198.19.0.0/16", "--proxy-mode=iptables"}
			s.Processes = []facts.Process{p}
		}, want: []string{"kube-proxy-cluster-cidr-wrong"}, inMsg: "the Service CIDR"},
		{name: "kube-proxy service CIDR learned from ClusterIPs", hints: &rules.Hints{}, mutate: func(t testing.TB, s *facts.NodeSnapshot) {
			p := kubeProxyProcess(t, "")
			p.Cmdline = []string{"kube-proxy", "--cluster-cidr=198.19.0.0/16"}
			s.Processes = []facts.Process{p}
		}, want: []string{"kube-proxy-cluster-cidr-wrong"}, inMsg: "holds all 3 ClusterIPs"},
		{name: "kube-proxy masquerade-all", mutate: func(t testing.TB, s *facts.NodeSnapshot) {
			s.Processes = []facts.Process{kubeProxyProcess(t, "kube-proxy-config-no-cidr.conf", "--masquerade-all")}
		}, checkID: "kube-proxy-cluster-cidr-missing", status: finding.Pass},
		{name: "kube-proxy detect-local-mode NodeCIDR", mutate: func(t testing.TB, s *facts.NodeSnapshot) {
			p := kubeProxyProcess(t, "")
			p.Cmdline = []string{"kube-proxy", "--detect-local-mode=NodeCIDR"}
			s.Processes = []facts.Process{p}
		}, checkID: "kube-proxy-cluster-cidr-missing", status: finding.Pass},
		{name: "kube-proxy of another namespace is ignored", mutate: func(t testing.TB, s *facts.NodeSnapshot) {
			p := kubeProxyProcess(t, "kube-proxy-config-no-cidr.conf")
			p.SameNetns = false
			s.Processes = []facts.Process{p}
		}, checkID: "kube-proxy-cluster-cidr-missing", status: finding.Pass},
		{name: "kube-proxy config unreadable: its rules decide", mutate: func(t testing.TB, s *facts.NodeSnapshot) {
			s.Processes = []facts.Process{kubeProxyProcess(t, "")}
		}, checkID: "kube-proxy-cluster-cidr-missing", status: finding.Pass},
		{name: "kube-proxy config unreadable, no masquerade rule", mutate: func(t testing.TB, s *facts.NodeSnapshot) {
			*s = *loadFixture(t, "flannel-kube-proxy-cluster-cidr-missing")
			s.Processes = []facts.Process{kubeProxyProcess(t, "")}
		}, want: []string{"kube-proxy-cluster-cidr-missing"}, inMsg: "config /var/lib/kube-proxy/config.conf: not readable in the snapshot"},
		{name: "kube-proxy nftables mode", mutate: func(t testing.TB, s *facts.NodeSnapshot) { nftKubeProxy(t, s, nil) },
			checkID: "kube-proxy-cluster-cidr-missing", status: finding.Pass},
		{name: "kube-proxy nftables mode without cluster CIDR", mutate: func(t testing.TB, s *facts.NodeSnapshot) {
			nftKubeProxy(t, s, func(r map[string]any) bool { return !isMasqRule(r) })
		}, want: []string{"kube-proxy-cluster-cidr-missing"}, inMsg: "3 cluster-IP service rules in nft"},
		{name: "kube-proxy nftables mode with the service CIDR", mutate: func(t testing.TB, s *facts.NodeSnapshot) {
			nftKubeProxy(t, s, func(r map[string]any) bool {
				if isMasqRule(r) {
					b, _ := json.Marshal(r)
					txt := strings.Replace(string(b), `"addr":"198.18.128.0","len":17`, `"addr":"198.19.0.0","len":16`, 1)
					_ = json.Unmarshal([]byte(txt), &r)
				}
				return true
			})
		}, want: []string{"kube-proxy-cluster-cidr-wrong"}, inMsg: "ip saddr != 198.19.0.0/16"},
		{name: "br_netfilter not loaded", mutate: func(_ testing.TB, s *facts.NodeSnapshot) {
			delete(s.Sysctls, "net.bridge.bridge-nf-call-iptables")
			s.Errors = map[string]string{"sysctl net.bridge.bridge-nf-call-iptables": "sysctl net.bridge.bridge-nf-call-iptables not present in netns node-1: module br_netfilter is not loaded (modprobe br_netfilter)"}
		}, want: []string{"bridge-nf-disabled"}, inMsg: "br_netfilter"},
		{name: "vxlan without local, two uplink addresses", mutate: func(_ testing.TB, s *facts.NodeSnapshot) {
			linkNamed(s, "flannel.1").VXLAN.Local = ""
			s.Addresses = append(s.Addresses, facts.Address{Link: "eth0", CIDR: "198.18.0.21/24", Family: 4, Scope: "global", Secondary: true})
		}, want: []string{"overlay-source-mismatch"}, sev: finding.Warning, inMsg: "has no local address"},
		{name: "vxlan local not on the node", mutate: func(_ testing.TB, s *facts.NodeSnapshot) { linkNamed(s, "flannel.1").VXLAN.Local = "198.18.0.99" },
			want: []string{"overlay-source-mismatch"}, sev: finding.Critical, inMsg: "no longer an address of this node"},
		{name: "vxlan local differs from the node IP peers know", hints: &rules.Hints{NodeIPs: []netip.Addr{netip.MustParseAddr("198.18.0.7")}},
			mutate: func(_ testing.TB, s *facts.NodeSnapshot) {}, want: []string{"overlay-source-mismatch"}, sev: finding.Critical, inMsg: "know this node as 198.18.0.7"},
		{name: "pod veth above the overlay MTU", mutate: func(_ testing.TB, s *facts.NodeSnapshot) { linkNamed(s, "vethpoda").MTU = 1500 },
			want: []string{"mtu-mismatch"}, sev: finding.Warning, inMsg: "pod veth vethpoda mtu 1500 > flannel.1 mtu 1450"},
		{name: "FLANNEL_MTU below the bridge", mutate: func(_ testing.TB, s *facts.NodeSnapshot) { s.Flannel.MTU = 1400 },
			want: []string{"mtu-mismatch"}, inMsg: "FLANNEL_MTU"},
		{name: "policy routing with strict rp_filter", mutate: func(_ testing.TB, s *facts.NodeSnapshot) {
			s.Sysctls["net.ipv4.conf.all.rp_filter"] = "1"
			s.Rules = append(s.Rules, facts.PolicyRule{Priority: 100, Src: "198.18.129.0/24", Table: 100, Family: 4})
		}, want: []string{"rp-filter-strict"}, inMsg: "100: from 198.18.129.0/24 lookup 100"},
		{name: "strict rp_filter with symmetric routes", mutate: func(_ testing.TB, s *facts.NodeSnapshot) { s.Sysctls["net.ipv4.conf.all.rp_filter"] = "1" },
			checkID: "rp-filter-strict", status: finding.Pass},
		{name: "loose rp_filter on the interface does not lower all=1", mutate: func(_ testing.TB, s *facts.NodeSnapshot) {
			s.Sysctls["net.ipv4.conf.eth0.rp_filter"] = "1"
			s.Rules = append(s.Rules, facts.PolicyRule{Priority: 100, Mark: 0x10, Table: 100, Family: 4})
		}, want: []string{"rp-filter-strict"}, inMsg: "net.ipv4.conf.eth0.rp_filter = 1"},
		{name: "pod route via the wrong gateway", mutate: func(_ testing.TB, s *facts.NodeSnapshot) {
			for i := range s.Routes {
				if s.Routes[i].Dst == peerPodCIDR {
					s.Routes[i].Gateway = "198.18.131.0"
				}
			}
		}, want: []string{"overlay-fdb-missing", "pod-route-missing"}, inMsg: "peer's overlay address is 198.18.130.0"},
		{name: "peer pod CIDR from a flag, no route", hints: &rules.Hints{PodCIDRs: []netip.Prefix{netip.MustParsePrefix(nodePodCIDR), netip.MustParsePrefix("198.18.140.0/24")}},
			mutate: func(_ testing.TB, s *facts.NodeSnapshot) {}, want: []string{"pod-route-missing"}, inMsg: "flag --pod-cidr 198.18.140.0/24"},
		{name: "peer pod route via the uplink instead of the overlay", mutate: func(_ testing.TB, s *facts.NodeSnapshot) {
			for i := range s.Routes {
				if s.Routes[i].Dst == peerPodCIDR {
					s.Routes[i] = facts.Route{Table: 254, Type: "unicast", Dst: peerPodCIDR, Gateway: "198.18.0.2", Link: "eth0", Protocol: "boot", Family: 4}
				}
			}
		}, want: []string{"pod-route-missing"}, inMsg: "leaves by eth0 instead of the overlay device flannel.1"},
		{name: "a routing daemon's pod route is not an overlap", mutate: func(_ testing.TB, s *facts.NodeSnapshot) {
			s.Routes = append(s.Routes, facts.Route{Table: 254, Type: "unicast", Dst: "198.18.131.0/26", Gateway: "198.18.0.3", Link: "eth0", Protocol: "bird", Family: 4})
		}, checkID: "pod-cidr-overlap", status: finding.Pass},
		{name: "external VXLAN device", mutate: func(_ testing.TB, s *facts.NodeSnapshot) {
			l := linkNamed(s, "flannel.1")
			l.VXLAN.VNI, l.VXLAN.Local = 0, ""
		}, checkID: "overlay-source-mismatch", status: finding.Skipped},
		{name: "no overlay: pod MTU above the uplink", mutate: func(_ testing.TB, s *facts.NodeSnapshot) {
			s.Links = slices.DeleteFunc(s.Links, func(l facts.Link) bool { return l.Name == "flannel.1" })
			linkNamed(s, "eth0").MTU = 1400
			s.Flannel = nil
		}, want: []string{"mtu-mismatch"}, inMsg: "pod veth vethpoda mtu 1450 > uplink eth0 mtu 1400"},
		{name: "Geneve port dropped", mutate: func(_ testing.TB, s *facts.NodeSnapshot) {
			l := linkNamed(s, "flannel.1")
			l.Name, l.Type, l.VXLAN = "genev_sys_6081", "geneve", nil
			s.Netfilter.IptablesNft = strings.Replace(s.Netfilter.IptablesNft, "-A INPUT -j KUBE-FIREWALL\n", "-A INPUT -j KUBE-FIREWALL\n-A INPUT -p udp -m udp --dport 6081 -j DROP\n", 1)
		}, want: []string{"overlay-port-blocked"}, inMsg: "-A INPUT -p udp -m udp --dport 6081 -j DROP"},
		{name: "Cilium WireGuard port rejected", mutate: func(_ testing.TB, s *facts.NodeSnapshot) {
			l := linkNamed(s, "flannel.1")
			l.Name, l.Type, l.VXLAN = "cilium_wg0", "wireguard", nil
			s.Netfilter.IptablesNft = strings.Replace(s.Netfilter.IptablesNft, "-A OUTPUT -j KUBE-FIREWALL\n", "-A OUTPUT -j KUBE-FIREWALL\n-A OUTPUT -p udp -m udp --dport 51871 -j REJECT --reject-with icmp-port-unreachable\n", 1)
		}, want: []string{"mtu-mismatch", "overlay-port-blocked"}, inMsg: "outbound WireGuard (Cilium) udp 198.18.0.1:40000 -> 198.18.0.2:51871"},
		{name: "an unsupported match on the overlay path is an error, not a pass", mutate: func(_ testing.TB, s *facts.NodeSnapshot) {
			s.Netfilter.IptablesNft = strings.Replace(s.Netfilter.IptablesNft, "-A INPUT -j KUBE-FIREWALL\n", "-A INPUT -p udp -m u32 --u32 \"0x0>>0x16&0x3c@0x8=0x2118\" -j DROP\n-A INPUT -j KUBE-FIREWALL\n", 1)
		}, checkID: "overlay-port-blocked", status: finding.Error},
		{name: "docker0 inside the pod network", mutate: func(_ testing.TB, s *facts.NodeSnapshot) {
			s.Links = append(s.Links, facts.Link{Index: 99, Name: "docker0", Type: "bridge", MTU: 1500, Up: true, State: "down"})
			s.Addresses = append(s.Addresses, facts.Address{Link: "docker0", CIDR: "198.18.128.1/17", Family: 4, Scope: "global"})
			s.Routes = append(s.Routes, facts.Route{Table: 254, Type: "unicast", Dst: "198.18.128.0/17", Link: "docker0", Protocol: "kernel", Scope: "link", Src: "198.18.128.1", Family: 4})
		}, want: []string{"pod-cidr-overlap"}, sev: finding.Warning, inMsg: "address 198.18.128.1/17 on docker0"},
		{name: "IPv6 forwarding off with IPv6 pods", mutate: func(_ testing.TB, s *facts.NodeSnapshot) {
			s.Sysctls["net.ipv6.conf.all.forwarding"] = "0"
			s.Addresses = append(s.Addresses, facts.Address{Link: "cni0", CIDR: "2001:db8:129::1/64", Family: 6, Scope: "global"})
		}, want: []string{"ip-forward-disabled"}, inMsg: "pod bridge cni0 has IPv6 address 2001:db8:129::1/64"},
		{name: "IPv6 forwarding off without IPv6 pods", mutate: func(_ testing.TB, s *facts.NodeSnapshot) { s.Sysctls["net.ipv6.conf.all.forwarding"] = "0" },
			checkID: "ip-forward-disabled", status: finding.Pass},
		{name: "overlay neighbour not permanent", mutate: func(_ testing.TB, s *facts.NodeSnapshot) {
			for i := range s.Neighbors {
				if s.Neighbors[i].Link == "flannel.1" {
					s.Neighbors[i].State = "stale"
				}
			}
		}, want: []string{"overlay-fdb-missing"}, sev: finding.Warning, inMsg: "198.18.130.0 dev flannel.1 lladdr 0e:00:00:00:01:02 STALE"},
		{name: "ip_forward off on a machine without pods is info", mutate: func(_ testing.TB, s *facts.NodeSnapshot) {
			*s = facts.NodeSnapshot{Version: facts.NodeSnapshotVersion, Node: "node-1", Sysctls: map[string]string{"net.ipv4.ip_forward": "0"}}
		}, hints: &rules.Hints{}, checkID: "ip-forward-disabled", status: finding.Pass},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := loadFixture(t, "flannel-clean")
			tt.mutate(t, s)
			var before *facts.NodeSnapshot
			if tt.before != nil {
				before = loadFixture(t, "flannel-clean")
				tt.before(t, before)
			}
			h := labHints
			if tt.hints != nil {
				h = *tt.hints
			}
			r := evaluate(s, before, h)
			got := problems(r)
			if !slices.Equal(got, tt.want) {
				b, _ := json.MarshalIndent(r.Findings, "", "  ")
				t.Fatalf("findings %v, want %v\n%s", got, tt.want, b)
			}
			if len(tt.want) > 0 {
				f := findingOf(r, tt.want[len(tt.want)-1])
				if tt.sev != "" && f.Severity != tt.sev {
					t.Errorf("severity %s, want %s", f.Severity, tt.sev)
				}
				text := f.Message + "\n" + strings.Join(f.Evidence, "\n")
				if tt.inMsg != "" && !strings.Contains(text, tt.inMsg) {
					t.Errorf("finding does not say %q:\n%s", tt.inMsg, text)
				}
			}
			if tt.checkID != "" {
				if c := checkStatus(r, tt.checkID); c.Status != tt.status {
					t.Errorf("check %s: %s (%s), want %s", tt.checkID, c.Status, c.Reason, tt.status)
				}
			}
		})
	}
}

func linkNamed(s *facts.NodeSnapshot, name string) *facts.Link {
	for i := range s.Links {
		if s.Links[i].Name == name {
			return &s.Links[i]
		}
	}
	panic("no link " + name)
}

// TestEmptySnapshot: nothing collected means every check is skipped with a
// reason; nothing passes, nothing panics.
func TestEmptySnapshot(t *testing.T) {
	for _, s := range []*facts.NodeSnapshot{{}, {Version: facts.NodeSnapshotVersion, Sysctls: map[string]string{}, Links: []facts.Link{}}} {
		r := evaluate(s, &facts.NodeSnapshot{}, rules.Hints{})
		if len(r.Checks) != len(rules.All()) {
			t.Fatalf("%d checks for %d rules", len(r.Checks), len(rules.All()))
		}
		for _, c := range r.Checks {
			if c.Status != finding.Skipped || c.Reason == "" {
				t.Errorf("empty snapshot: check %s is %s (%q), want skipped with a reason", c.ID, c.Status, c.Reason)
			}
		}
		if len(r.Findings) != 0 {
			t.Errorf("empty snapshot: findings %+v", r.Findings)
		}
	}
	if r := rules.Evaluate(&rules.Input{}); r.Summary.Skipped != len(rules.All()) {
		t.Errorf("nil snapshot: %+v", r.Summary)
	}
}

// TestCollectorErrorsSkip: a section the collector could not read makes the
// rules that need it skip with the collector's reason, never pass.
func TestCollectorErrorsSkip(t *testing.T) {
	s := loadFixture(t, "flannel-forward-policy-drop")
	s.Errors = map[string]string{
		"conntrack":                  "read /proc/net/stat/nf_conntrack: permission denied",
		"links":                      "netlink: operation not permitted",
		"sysctl net.ipv4.ip_forward": "read sysctl net.ipv4.ip_forward in netns node-1: permission denied",
	}
	delete(s.Sysctls, "net.ipv4.ip_forward")
	r := evaluate(s, nil, labHints)
	for id, why := range map[string]string{
		"conntrack-table-full":    "permission denied",
		"conntrack-insert-failed": "permission denied",
		"mtu-mismatch":            "netlink: operation not permitted",
		"overlay-fdb-missing":     "netlink",
		"ip-forward-disabled":     "read sysctl net.ipv4.ip_forward",
	} {
		c := checkStatus(r, id)
		if c.Status != finding.Skipped || !strings.Contains(c.Reason, why) {
			t.Errorf("check %s: %s %q, want skipped naming %q", id, c.Status, c.Reason, why)
		}
	}
	// The netfilter facts are intact: the FORWARD drop is still found.
	if findingOf(r, "forward-policy-drop") == nil {
		t.Error("forward-policy-drop lost although its facts are there")
	}
}

// TestUnparsableRulesAreErrors: a dump the parser rejects makes the tracing
// rules report error (never pass).
func TestUnparsableRulesAreErrors(t *testing.T) {
	s := loadFixture(t, "flannel-clean")
	s.Netfilter.IptablesNft = "*filter\n-A NOCHAIN -j DROP\nCOMMIT\n"
	r := evaluate(s, nil, labHints)
	for _, id := range []string{"forward-policy-drop", "overlay-port-blocked"} {
		if c := checkStatus(r, id); c.Status != finding.Error || !strings.Contains(c.Reason, "iptables-nft") {
			t.Errorf("check %s: %s %q, want error naming the dump", id, c.Status, c.Reason)
		}
	}
}

func TestPanickingRuleIsAnError(t *testing.T) {
	r := rules.Rule{ID: "x-test", Severity: finding.Warning, Run: func(*rules.Input) rules.Result { panic("boom") }}
	_, cs := rules.RunRules(&rules.Input{Node: &facts.NodeSnapshot{}}, []rules.Rule{r})
	if len(cs) != 1 || cs[0].Status != finding.Error || !strings.Contains(cs[0].Reason, "boom") {
		t.Fatalf("checks %+v", cs)
	}
}

// TestRegistry: the node rules of issue 2, with the IDs of FAULTS.md, each a
// complete record.
func TestRegistry(t *testing.T) {
	want := []string{"bridge-nf-disabled", "conntrack-insert-failed", "conntrack-table-full", "ephemeral-ports-exhausted",
		"forward-policy-drop", "ip-forward-disabled", "kube-proxy-cluster-cidr-missing", "kube-proxy-cluster-cidr-wrong",
		"mtu-mismatch", "nic-queue-drops", "overlay-fdb-missing", "overlay-port-blocked", "overlay-source-mismatch",
		"pod-cidr-overlap", "pod-route-missing", "rp-filter-strict"}
	var got []string
	for _, r := range rules.All() {
		got = append(got, r.ID)
		if r.Title == "" || r.Docs == "" || r.Severity.Rank() == 0 {
			t.Errorf("rule %s: incomplete record %+v", r.ID, r)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("rules %v, want %v", got, want)
	}
}

// FuzzEvaluate: any snapshot that decodes, however odd, is evaluated without
// a panic and every rule reports a check.
func FuzzEvaluate(f *testing.F) {
	for _, n := range []string{"flannel-clean", "flannel-mtu-mismatch", "flannel-overlay-fdb-wrong-dst"} {
		b, err := os.ReadFile(filepath.Join("testdata", n+".json"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"links":[{"name":"flannel.1","type":"vxlan","vxlan":{"local":"x"}}],"routes":[{"dst":"default"},{"dst":"10.0.0.0/33","link":"flannel.1","gateway":"zz"}],"neighbors":[{"link":"flannel.1","ip":"::1"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var s facts.NodeSnapshot
		if json.Unmarshal(data, &s) != nil {
			return
		}
		in := &rules.Input{Node: &s, Before: &s, Hints: labHints}
		r := rules.Evaluate(in)
		if len(r.Checks) != len(rules.All()) {
			t.Fatalf("%d checks for %d rules", len(r.Checks), len(rules.All()))
		}
		for _, c := range r.Checks {
			if c.Status == finding.Error && strings.Contains(c.Reason, "failed on these facts") {
				t.Fatalf("rule %s panicked: %s", c.ID, c.Reason)
			}
		}
	})
}

// TestLabNodeCapture runs the rules on a snapshot of a node of the real lab
// (`netdoctor node collect --netns ndlab-mf-node1`: real kube-proxy v1.37.2 in
// iptables mode with the lab's kubeadm-shaped config, the lab's flannel-like
// datapath), then on copies with kube-proxy's config edited.
func TestLabNodeCapture(t *testing.T) {
	setCIDR := func(cidr string) func(*facts.NodeSnapshot) {
		return func(s *facts.NodeSnapshot) {
			for i := range s.Processes {
				p := &s.Processes[i]
				if !p.SameNetns {
					continue
				}
				for k, v := range p.Config {
					var out []string
					for _, line := range strings.Split(v, "\n") {
						if strings.HasPrefix(line, "clusterCIDR:") {
							line = "clusterCIDR: " + cidr
						}
						out = append(out, line)
					}
					p.Config[k] = strings.Join(out, "\n")
				}
			}
		}
	}
	tests := []struct {
		name   string
		mutate func(*facts.NodeSnapshot)
		want   []string
		inText string
	}{
		{"as captured", func(*facts.NodeSnapshot) {}, nil, ""},
		{"clusterCIDR empty", setCIDR(`""`), []string{"kube-proxy-cluster-cidr-missing"}, `clusterCIDR: ""`},
		{"clusterCIDR is the service range", setCIDR("198.19.0.0/16"), []string{"kube-proxy-cluster-cidr-wrong"}, "it is the Service range: it holds all"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := loadFixture(t, "lab-node1")
			tt.mutate(s)
			r := evaluate(s, nil, rules.Hints{})
			if got := problems(r); !slices.Equal(got, tt.want) {
				t.Fatalf("findings %v, want %v", got, tt.want)
			}
			for _, c := range r.Checks {
				if tt.want == nil && c.Status != finding.Pass {
					t.Errorf("check %s on the healthy lab node: %s (%s)", c.ID, c.Status, c.Reason)
				}
			}
			if tt.want != nil {
				f := findingOf(r, tt.want[0])
				text := f.Message + "\n" + strings.Join(f.Evidence, "\n")
				if !strings.Contains(text, tt.inText) || !strings.Contains(text, "kube-proxy pid 1338: /work/main/bin/netdoctor-k8s kube-proxy --config=/var/lib/kube-proxy/config.conf") {
					t.Errorf("finding lacks %q or the process:\n%s", tt.inText, text)
				}
			}
		})
	}
}
