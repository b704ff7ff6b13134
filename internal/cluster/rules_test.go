package cluster

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/netdoctor/netdoctor/internal/finding"
)

// healthy returns a healthy 3-node flannel cluster: kube-proxy DaemonSet
// (system-node-critical, clusterCIDR in its ConfigMap), CoreDNS with ready
// endpoints, a web Service with ready endpoints on node-2 and node-3.
func healthy() *Snapshot {
	s := &Snapshot{Version: SnapshotVersion, ServiceCIDRs: []string{"198.19.0.0/16"}, ServiceCIDRSource: "networking.k8s.io/v1 ServiceCIDR"}
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("node-%d", i)
		ip := fmt.Sprintf("198.18.0.%d", 10+i)
		s.Nodes = append(s.Nodes, Node{Name: name, InternalIP: ip, PodCIDRs: []string{fmt.Sprintf("198.18.%d.0/24", 128+i)},
			Annotations: map[string]string{AnnotationFlannelPublicIP: ip, AnnotationFlannelBackendData: fmt.Sprintf(`{"VNI":1,"VtepMAC":"aa:bb:cc:00:00:0%d"}`, i)},
			Conditions:  []Condition{{Type: "Ready", Status: "True"}}})
		s.Pods = append(s.Pods, Pod{Namespace: KubeSystem, Name: "kube-proxy-" + name, Node: name, Phase: "Running", Ready: true, HostNetwork: true,
			Labels: map[string]string{"k8s-app": "kube-proxy"}, OwnerKind: "DaemonSet", OwnerName: "kube-proxy", PriorityClassName: "system-node-critical", PodIPs: []string{ip}})
		s.Pods = append(s.Pods, Pod{Namespace: AgentNamespace, Name: "netdoctor-target-" + name, Node: name, Phase: "Running", Ready: true,
			Labels: map[string]string{LabelAppName: TargetName}, PodIPs: []string{fmt.Sprintf("198.18.%d.2", 128+i)},
			Containers: []Container{{Name: "target", Ports: []ContainerPort{{Name: "probe", Port: TargetPort, Protocol: "TCP"}}}}})
	}
	s.Pods = append(s.Pods,
		Pod{Namespace: KubeSystem, Name: "coredns-1", Node: "node-1", Phase: "Running", Ready: true, Labels: map[string]string{"k8s-app": "kube-dns"}, PodIPs: []string{"198.18.129.3"},
			Containers: []Container{{Name: "coredns", Ports: []ContainerPort{{Name: "dns", Port: 53, Protocol: "UDP"}, {Name: "dns-tcp", Port: 53, Protocol: "TCP"}}}}},
		Pod{Namespace: "web", Name: "web-a", Node: "node-2", Phase: "Running", Ready: true, Labels: map[string]string{"app": "web"}, PodIPs: []string{"198.18.130.5"},
			Containers: []Container{{Name: "http", Ports: []ContainerPort{{Name: "http", Port: 8080, Protocol: "TCP"}}}}},
		Pod{Namespace: "web", Name: "web-b", Node: "node-3", Phase: "Running", Ready: true, Labels: map[string]string{"app": "web"}, PodIPs: []string{"198.18.131.5"},
			Containers: []Container{{Name: "http", Ports: []ContainerPort{{Name: "http", Port: 8080, Protocol: "TCP"}}}}},
	)
	s.Services = []Service{
		{Namespace: "default", Name: "kubernetes", Type: "ClusterIP", ClusterIPs: []string{"198.19.0.1"}, Ports: []ServicePort{{Name: "https", Protocol: "TCP", Port: 443, TargetPort: "6443"}}},
		{Namespace: KubeSystem, Name: "kube-dns", Type: "ClusterIP", ClusterIPs: []string{"198.19.0.10"}, Selector: map[string]string{"k8s-app": "kube-dns"},
			Ports: []ServicePort{{Name: "dns", Protocol: "UDP", Port: 53, TargetPort: "53"}, {Name: "dns-tcp", Protocol: "TCP", Port: 53, TargetPort: "53"}}},
		{Namespace: "web", Name: "web", Type: "ClusterIP", ClusterIPs: []string{"198.19.0.80"}, Selector: map[string]string{"app": "web"}, Ports: []ServicePort{{Protocol: "TCP", Port: 80, TargetPort: "http"}}},
		{Namespace: AgentNamespace, Name: TargetName, Type: "ClusterIP", ClusterIPs: []string{"198.19.0.90"}, Selector: map[string]string{LabelAppName: TargetName}, Ports: []ServicePort{{Protocol: "TCP", Port: 80, TargetPort: "probe"}}},
	}
	tr := true
	_ = tr
	s.EndpointSlices = []EndpointSlice{
		{Namespace: "default", Name: "kubernetes", Service: "kubernetes", AddressType: "IPv4", Ports: []EndpointPort{{Name: "https", Port: 6443, Protocol: "TCP"}},
			Endpoints: []Endpoint{{Addresses: []string{"198.18.0.2"}, Ready: true, Serving: true}}},
		{Namespace: KubeSystem, Name: "kube-dns-x", Service: "kube-dns", AddressType: "IPv4", Ports: []EndpointPort{{Name: "dns", Port: 53, Protocol: "UDP"}, {Name: "dns-tcp", Port: 53, Protocol: "TCP"}},
			Endpoints: []Endpoint{{Addresses: []string{"198.18.129.3"}, Ready: true, Serving: true, Node: "node-1", Pod: "kube-system/coredns-1"}}},
		{Namespace: "web", Name: "web-x", Service: "web", AddressType: "IPv4", Ports: []EndpointPort{{Port: 8080, Protocol: "TCP"}},
			Endpoints: []Endpoint{{Addresses: []string{"198.18.130.5"}, Ready: true, Serving: true, Node: "node-2", Pod: "web/web-a"}, {Addresses: []string{"198.18.131.5"}, Ready: true, Serving: true, Node: "node-3", Pod: "web/web-b"}}},
		{Namespace: AgentNamespace, Name: "t-x", Service: TargetName, AddressType: "IPv4", Ports: []EndpointPort{{Port: TargetPort, Protocol: "TCP"}},
			Endpoints: []Endpoint{{Addresses: []string{"198.18.129.2"}, Ready: true, Node: "node-1"}, {Addresses: []string{"198.18.130.2"}, Ready: true, Node: "node-2"}, {Addresses: []string{"198.18.131.2"}, Ready: true, Node: "node-3"}}},
	}
	s.DaemonSets = []Workload{{Kind: "DaemonSet", Namespace: KubeSystem, Name: "kube-proxy", Labels: map[string]string{"k8s-app": "kube-proxy"}, PriorityClassName: "system-node-critical",
		Containers: []Container{{Name: "kube-proxy", Command: []string{"kube-proxy", "--config=/var/lib/kube-proxy/config.conf", "--hostname-override=$(NODE_NAME)"}}}, HostNetwork: true, Desired: 3, Ready: 3, Available: 3}}
	s.Deployments = []Workload{{Kind: "Deployment", Namespace: KubeSystem, Name: "coredns", Labels: map[string]string{"k8s-app": "kube-dns"}, Desired: 1, Ready: 1, Available: 1}}
	s.ConfigMaps = map[string]map[string]string{
		KubeSystem + "/kube-proxy": {"config.conf": "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclusterCIDR: 198.18.128.0/17\nmode: iptables\n"},
		KubeSystem + "/coredns":    {"Corefile": ".:53 {\n    kubernetes cluster.local in-addr.arpa ip6.arpa\n    forward . /etc/resolv.conf\n}\n"},
	}
	s.PriorityClasses = []string{"system-cluster-critical", "system-node-critical"}
	return s
}

// healthyAgents are the matching agent results: same shape on each node,
// service rules equal to the API's, every probe ok.
func healthyAgents(s *Snapshot, spec *ProbeSpec) map[string]*AgentResult {
	out := map[string]*AgentResult{}
	rules := ExpectedServiceRules(s)
	for i, n := range s.Nodes {
		a := &AgentResult{Version: AgentResultVersion, Node: n.Name, Request: "r1", ServiceRulesMode: "iptables"}
		for _, r := range rules {
			r.Targets = nil
			a.ServiceRules = append(a.ServiceRules, r)
		}
		a.Summary = NodeSummary{
			KubeProxy:    &KubeProxyState{Running: true, PID: 100 + i, Mode: "iptables", Flags: map[string]string{"cluster-cidr": "198.18.128.0/17", "proxy-mode": "iptables", "hostname-override": n.Name}, Healthz: &HealthCheck{OK: true, Detail: "200 OK"}},
			Sysctls:      map[string]string{"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1"},
			Routes:       map[string]int{"default via <gateway> dev eth0": 1, "<own-pod-cidr> dev cni0": 1, "<peer-pod-cidr> via <peer-pod-net> dev flannel.1 onlink": 2},
			Netfilter:    map[string]string{"filter/FORWARD": "policy ACCEPT 3 rules", "nat/KUBE-SERVICES": "abc"},
			Tunnels:      []Tunnel{{Device: "flannel.1", Type: "vxlan", Local: n.InternalIP, Port: 8472, VNI: 1, MAC: vtepMAC(&s.Nodes[i])}},
			TunnelSource: n.InternalIP, UplinkAddresses: []string{n.InternalIP + "/24"},
			FDB: map[string]string{},
		}
		for j, p := range s.Nodes {
			if p.Name != n.Name {
				a.Summary.FDB[vtepMAC(&s.Nodes[j])] = p.InternalIP
			}
		}
		if spec != nil {
			for _, p := range Plan(spec, n.Name) {
				a.Probes = append(a.Probes, ProbeResult{ID: p.ID, Status: ProbeOK})
			}
		}
		out[n.Name] = a
	}
	return out
}

func ids(fs []finding.Finding, minRank int) []string {
	var out []string
	for _, f := range fs {
		if f.Severity.Rank() >= minRank {
			out = append(out, f.ID+"@"+f.Node)
		}
	}
	return out
}

func TestHealthyClusterIsClean(t *testing.T) {
	s := healthy()
	spec := BuildSpec(s, SpecOptions{ExternalName: "www.example.lab"})
	rep := Reduce(s, spec, healthyAgents(s, spec), nil)
	if got := ids(rep.Findings, 1); len(got) > 0 {
		for _, f := range rep.Findings {
			t.Logf("%s %s %s %v", f.ID, f.Node, f.Message, f.Evidence)
		}
		t.Fatalf("healthy cluster has findings: %v", got)
	}
	for _, c := range rep.Checks {
		if c.Status == finding.Fail || c.Status == finding.Error {
			t.Errorf("check %s on %q: %s %s", c.ID, c.Node, c.Status, c.Reason)
		}
	}
	if rep.ExitCode() != 0 {
		t.Errorf("exit code %d", rep.ExitCode())
	}
	// API-only: agent rules skipped with a reason, nothing failing.
	rep = Reduce(s, nil, nil, nil)
	skipped := 0
	for _, c := range rep.Checks {
		if c.Status == finding.Skipped {
			skipped++
			if c.Reason == "" {
				t.Errorf("skipped check %s without reason", c.ID)
			}
		}
	}
	if skipped == 0 || len(rep.Findings) != 0 {
		t.Errorf("--no-agent: skipped %d, findings %v", skipped, ids(rep.Findings, 0))
	}
}

func TestClusterRules(t *testing.T) {
	type mut func(s *Snapshot, a map[string]*AgentResult, spec *ProbeSpec)
	cases := []struct {
		name   string
		mutate mut
		want   []string // id@node expected (warning or critical)
		evid   string   // a substring of the first wanted finding's evidence or message
	}{
		{"kube-proxy pod evicted", func(s *Snapshot, _ map[string]*AgentResult, _ *ProbeSpec) {
			s.Pods[2].Phase, s.Pods[2].Reason, s.Pods[2].Ready = "Failed", "Evicted", false // kube-proxy-node-2
		}, []string{"kube-proxy-not-running@node-2"}, "evicted"},
		{"kube-proxy pod missing", func(s *Snapshot, _ map[string]*AgentResult, _ *ProbeSpec) {
			s.Pods = append(s.Pods[:4], s.Pods[5:]...) // drop kube-proxy-node-3 (index 4)
			s.DaemonSets[0].Ready = 2
		}, []string{"kube-proxy-not-running@node-3"}, "no kube-proxy pod scheduled on node-3"},
		{"kube-proxy healthz failing and no rules", func(_ *Snapshot, a map[string]*AgentResult, _ *ProbeSpec) {
			a["node-1"].Summary.KubeProxy.Healthz = &HealthCheck{OK: false, Detail: "dial tcp 127.0.0.1:10256: connect: connection refused"}
			a["node-1"].ServiceRules = nil
		}, []string{"kube-proxy-not-running@node-1"}, "connection refused"},
		{"kube-proxy not critical", func(s *Snapshot, _ map[string]*AgentResult, _ *ProbeSpec) {
			s.DaemonSets[0].PriorityClassName = ""
		}, []string{"kube-proxy-not-critical@"}, "priorityClassName: (none)"},
		{"cluster cidr missing (API)", func(s *Snapshot, a map[string]*AgentResult, _ *ProbeSpec) {
			s.ConfigMaps[KubeSystem+"/kube-proxy"]["config.conf"] = "kind: KubeProxyConfiguration\nclusterCIDR: \"\"\nmode: ipvs\n"
			for _, r := range a {
				r.Summary.KubeProxy.Running = false
			}
		}, []string{"kube-proxy-cluster-cidr-missing@node-1", "kube-proxy-cluster-cidr-missing@node-2", "kube-proxy-cluster-cidr-missing@node-3"}, "clusterCIDR not set"},
		{"cluster cidr missing on one node (agent flags)", func(_ *Snapshot, a map[string]*AgentResult, _ *ProbeSpec) {
			delete(a["node-3"].Summary.KubeProxy.Flags, "cluster-cidr")
		}, []string{"kube-proxy-cluster-cidr-missing@node-3", "node-config-drift@node-3"}, "running kube-proxy"},
		{"kube-proxy config unreadable on a node is not a missing clusterCIDR", func(_ *Snapshot, a map[string]*AgentResult, _ *ProbeSpec) {
			delete(a["node-1"].Summary.KubeProxy.Flags, "cluster-cidr")
			a["node-1"].Summary.KubeProxy.ConfigUnreadable = "/var/lib/kube-proxy/config.conf"
			a["node-1"].Summary.KubeProxy.Flags["proxy-mode"] = "iptables"
			a["node-2"].Summary.KubeProxy.Flags["proxy-mode"] = "nftables" // so that the case has a finding to assert
		}, []string{"node-config-drift@node-2"}, "kube-proxy --proxy-mode: nftables on node-2"},
		{"cluster cidr is the service CIDR (seed 004)", func(_ *Snapshot, a map[string]*AgentResult, _ *ProbeSpec) {
			a["node-2"].Summary.KubeProxy.Flags["cluster-cidr"] = "198.19.0.0/16"
		}, []string{"kube-proxy-cluster-cidr-wrong@node-2", "node-config-drift@node-2"}, "overlaps the Service CIDR"},
		{"service rules missing on one node", func(_ *Snapshot, a map[string]*AgentResult, _ *ProbeSpec) {
			rs := a["node-3"].ServiceRules
			var keep []ServiceRule
			for _, r := range rs {
				if r.Service != "web/web" {
					keep = append(keep, r)
				}
			}
			a["node-3"].ServiceRules = keep
		}, []string{"service-rules-missing@node-3"}, "web/web 80/TCP: no iptables rule on node-3"},
		{"stale endpoint on one node", func(_ *Snapshot, a map[string]*AgentResult, _ *ProbeSpec) {
			staleWebOnNode1(a)
		}, []string{"service-rules-missing@node-1"}, "stale 198.18.131.9:8080"},
		{"stale endpoint long after the last EndpointSlice change", func(s *Snapshot, a map[string]*AgentResult, _ *ProbeSpec) {
			s.CollectedAt = time.Date(2026, 11, 22, 20, 0, 0, 0, time.UTC)
			for i := range s.EndpointSlices {
				s.EndpointSlices[i].Created = s.CollectedAt.Add(-2 * time.Minute)
			}
			staleWebOnNode1(a)
		}, []string{"service-rules-missing@node-1"}, "stale 198.18.131.9:8080"},
		{"service selector matches nothing", func(s *Snapshot, _ map[string]*AgentResult, _ *ProbeSpec) {
			s.Services[2].Selector = map[string]string{"app": "wbe"}
			s.EndpointSlices[2].Endpoints = nil
		}, []string{"service-no-endpoints@"}, "selector app=wbe matches no pod"},
		{"service targetPort names no container port", func(s *Snapshot, _ map[string]*AgentResult, _ *ProbeSpec) {
			s.Services[2].Ports[0].TargetPort = "htp"
			s.EndpointSlices[2].Endpoints = nil
		}, []string{"service-no-endpoints@"}, `targetPort "htp"`},
		{"service backend scaled to zero", func(s *Snapshot, _ map[string]*AgentResult, _ *ProbeSpec) {
			for i := range s.Pods {
				if s.Pods[i].Namespace == "web" {
					s.Pods[i].Ready = false
					s.Pods[i].Waiting = []string{"http: CrashLoopBackOff"}
				}
			}
			for i := range s.EndpointSlices[2].Endpoints {
				s.EndpointSlices[2].Endpoints[i].Ready = false
			}
		}, []string{"service-no-endpoints@"}, "CrashLoopBackOff"},
		{"node without pod CIDR", func(s *Snapshot, _ map[string]*AgentResult, _ *ProbeSpec) {
			s.Nodes[1].PodCIDRs = nil
		}, []string{"node-pod-cidr-missing@node-2"}, "2 of 3 nodes have one"},
		{"dns pods unavailable", func(s *Snapshot, _ map[string]*AgentResult, _ *ProbeSpec) {
			s.EndpointSlices[1].Endpoints = nil
			s.Deployments[0].Desired, s.Deployments[0].Ready, s.Deployments[0].Available = 0, 0, 0
			s.Pods = s.Pods[:len(s.Pods)-3]
			s.Pods = append(s.Pods, healthy().Pods[len(healthy().Pods)-2:]...)
		}, []string{"dns-pods-unavailable@"}, "replicas 0"},
		{"overlay source mismatch (seed 002 case 1)", func(_ *Snapshot, a map[string]*AgentResult, _ *ProbeSpec) {
			a["node-2"].Summary.TunnelSource = "198.18.0.99"
			a["node-2"].Summary.UplinkAddresses = append(a["node-2"].Summary.UplinkAddresses, "198.18.0.99/24")
		}, []string{"overlay-source-mismatch@node-2"}, "sends its tunnel traffic from 198.18.0.99"},
		{"peer FDB points at a wrong address", func(_ *Snapshot, a map[string]*AgentResult, _ *ProbeSpec) {
			a["node-1"].Summary.FDB["aa:bb:cc:00:00:03"] = "198.18.0.77"
		}, []string{"overlay-source-mismatch@node-3"}, "peer node-1's FDB"},
		{"endpoint refuses", func(_ *Snapshot, a map[string]*AgentResult, spec *ProbeSpec) {
			for i, p := range a["node-2"].Probes {
				if strings.HasPrefix(p.ID, "h:endpoint:web/web:") {
					a["node-2"].Probes[i] = ProbeResult{ID: p.ID, Status: ProbeFail, Detail: "connect: connection refused"}
				}
			}
		}, []string{"endpoint-not-listening@node-2"}, "connection refused"},
		{"node drift: ip_forward", func(_ *Snapshot, a map[string]*AgentResult, _ *ProbeSpec) {
			a["node-1"].Summary.Sysctls["net.ipv4.ip_forward"] = "0"
		}, []string{"node-config-drift@node-1"}, "sysctl net.ipv4.ip_forward: 0 on node-1, 1 on 2 of 3 nodes"},
		{"node drift: route missing", func(_ *Snapshot, a map[string]*AgentResult, _ *ProbeSpec) {
			a["node-3"].Summary.Routes["<peer-pod-cidr> via <peer-pod-net> dev flannel.1 onlink"] = 1
		}, []string{"node-config-drift@node-3"}, "route <peer-pod-cidr> via <peer-pod-net> dev flannel.1 onlink: 1 on node-3, 2 on 2 of 3 nodes"},
		{"cross-namespace DNS fails from node-3 only (seed 000)", func(_ *Snapshot, a map[string]*AgentResult, _ *ProbeSpec) {
			for i, p := range a["node-3"].Probes {
				if strings.HasSuffix(p.ID, ":"+KindDNSNS) {
					a["node-3"].Probes[i] = ProbeResult{ID: p.ID, Status: ProbeFail, Detail: "timeout after 2s"}
				}
			}
		}, []string{"dns-resolution-failed@node-3"}, "only node-3 fails"},
		{"CoreDNS on an unreachable node: only that node is critical", func(_ *Snapshot, a map[string]*AgentResult, _ *ProbeSpec) {
			// node-1 hosts CoreDNS and its pods are unreachable: node-2 and
			// node-3 see DNS fail through it, node-1's own pod netns fails all.
			for _, n := range []string{"node-2", "node-3"} {
				for i, p := range a[n].Probes {
					if strings.HasSuffix(p.ID, ":node-1") && strings.Contains(p.ID, ":pod-icmp:") {
						a[n].Probes[i] = ProbeResult{ID: p.ID, Status: ProbeFail, Detail: "no reply in 1.5s"}
					}
					if strings.HasSuffix(p.ID, ":"+KindDNSNS) {
						a[n].Probes[i] = ProbeResult{ID: p.ID, Status: ProbeFail, Detail: "i/o timeout"}
					}
				}
			}
			for i, p := range a["node-1"].Probes {
				if strings.HasPrefix(p.ID, "p:") {
					a["node-1"].Probes[i] = ProbeResult{ID: p.ID, Status: ProbeFail, Detail: "i/o timeout"}
				}
			}
		}, []string{"dns-resolution-failed@node-1"}, "fail"},
		{"node-level findings passed through", func(_ *Snapshot, a map[string]*AgentResult, _ *ProbeSpec) {
			a["node-2"].Findings = []finding.Finding{{ID: "ip-forward-disabled", Severity: finding.Critical, Message: "ip_forward is 0", Evidence: []string{"net.ipv4.ip_forward = 0"}, Remediation: "sysctl -w net.ipv4.ip_forward=1"}}
		}, []string{"ip-forward-disabled@node-2"}, "ip_forward"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := healthy()
			spec := BuildSpec(s, SpecOptions{ExternalName: "www.example.lab"})
			a := healthyAgents(s, spec)
			tc.mutate(s, a, spec)
			rep := Reduce(s, spec, a, nil)
			got := ids(rep.Findings, 2)
			if strings.Join(sorted(got), " ") != strings.Join(sorted(tc.want), " ") {
				for _, f := range rep.Findings {
					t.Logf("%s@%s: %s %q", f.ID, f.Node, f.Message, f.Evidence)
				}
				t.Fatalf("findings %v, want %v", got, tc.want)
			}
			first := strings.SplitN(tc.want[0], "@", 2)
			for _, f := range rep.Findings {
				if f.ID == first[0] && f.Node == first[1] {
					all := f.Message + "\n" + strings.Join(f.Evidence, "\n")
					if !strings.Contains(all, tc.evid) {
						t.Errorf("%s: %q not in:\n%s", f.ID, tc.evid, all)
					}
					if f.Remediation == "" || len(f.Evidence) == 0 {
						t.Errorf("%s: no remediation or evidence", f.ID)
					}
				}
			}
			if rep.ExitCode() != 1 {
				t.Errorf("exit code %d, want 1", rep.ExitCode())
			}
		})
	}
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func TestMissingAgentIsError(t *testing.T) {
	s := healthy()
	spec := BuildSpec(s, SpecOptions{})
	a := healthyAgents(s, spec)
	delete(a, "node-2")
	rep := Reduce(s, spec, a, map[string]string{"node-2": "no result before the deadline (10s)"})
	found := false
	for _, c := range rep.Checks {
		if c.ID == "agent" && c.Node == "node-2" {
			found = c.Status == finding.Error && strings.Contains(c.Reason, "deadline")
		}
	}
	if !found {
		t.Errorf("no agent error check for node-2: %+v", rep.Checks)
	}
	for _, r := range rep.Matrix.Rows {
		if r.Node == "node-2" && r.Cells[KindPodICMP].Status != ProbeError {
			t.Errorf("node-2 matrix cell %+v, want error", r.Cells[KindPodICMP])
		}
	}
	if got := ids(rep.Findings, 2); len(got) != 0 {
		t.Errorf("findings %v with one node silent", got)
	}
	if !strings.Contains(rep.Verdict(3), "1 node(s) did not answer") {
		t.Errorf("verdict %q", rep.Verdict(3))
	}
}

func TestSnapshotJSONRoundTrip(t *testing.T) {
	s := healthy()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var back Snapshot
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	b2, _ := json.Marshal(&back)
	if string(b) != string(b2) {
		t.Error("snapshot does not round-trip")
	}
	if p := filepath.Join("testdata", "healthy.json"); os.Getenv("UPDATE") != "" {
		out, _ := json.MarshalIndent(s, "", "  ")
		_ = os.WriteFile(p, out, 0o644)
	}
}

// staleWebOnNode1 makes node-1's agent report web/web's rules with a second, stale endpoint.
func staleWebOnNode1(a map[string]*AgentResult) {
	for i, r := range a["node-1"].ServiceRules {
		if r.Service == "web/web" {
			tg := []string{"198.18.130.5:8080", "198.18.131.9:8080"}
			a["node-1"].ServiceRules[i] = ServiceRule{Service: r.Service, Port: r.Port, ClusterIP: r.ClusterIP, Endpoints: 2, Hash: EndpointsHash(tg), Targets: tg}
		}
	}
}

// healthyAt is the healthy cluster collected at the given time, its probe spec and its
// agents' answers.
func healthyAt(at time.Time) (*Snapshot, *ProbeSpec, map[string]*AgentResult) {
	s := healthy()
	spec := BuildSpec(s, SpecOptions{ExternalName: "www.example.lab"})
	a := healthyAgents(s, spec)
	s.CollectedAt = at
	return s, spec, a
}

// A node whose rules differ for a Service changed seconds before the check
// is kube-proxy not having synced yet: skipped with the reason, no finding.
func TestServiceRulesMissingGraceAfterChange(t *testing.T) {
	s, spec, a := healthyAt(time.Date(2026, 11, 22, 20, 0, 0, 0, time.UTC))
	for i := range s.EndpointSlices {
		if s.EndpointSlices[i].Namespace+"/"+s.EndpointSlices[i].Service == "web/web" {
			s.EndpointSlices[i].Created = s.CollectedAt.Add(-5 * time.Second)
		}
	}
	staleWebOnNode1(a)
	rep := Reduce(s, spec, a, nil)
	for _, f := range rep.Findings {
		if f.ID == "service-rules-missing" {
			t.Fatalf("finding for a change 5s old: %s %q", f.Message, f.Evidence)
		}
	}
	found := false
	for _, c := range rep.Checks {
		if c.ID == "service-rules-missing" && c.Node == "node-1" {
			found = true
			if c.Status != finding.Skipped || !strings.Contains(c.Reason, "may not have synced") {
				t.Fatalf("check on node-1: %s %q, want skipped (not synced yet)", c.Status, c.Reason)
			}
		}
	}
	if !found {
		t.Fatal("no service-rules-missing check for node-1")
	}
}

// An endpoint the API gained after the agents compared their node's rules with it: every
// node's rules lack it, but each agent found its node in step with the API it read, so the
// check is skipped (the API changed while the check ran). An agent that still saw the
// difference after its wait is believed: a finding.
func TestServiceRulesMissingChurnDuringCheck(t *testing.T) {
	s, spec, a := healthyAt(time.Date(2026, 11, 22, 20, 0, 0, 0, time.UTC))
	for i := range s.EndpointSlices {
		s.EndpointSlices[i].Created = s.CollectedAt.Add(-2 * time.Minute)
		if s.EndpointSlices[i].Namespace+"/"+s.EndpointSlices[i].Service == "web/web" {
			e := s.EndpointSlices[i].Endpoints[0]
			e.Addresses = []string{"198.18.131.77"}
			s.EndpointSlices[i].Endpoints = append(s.EndpointSlices[i].Endpoints, e)
		}
	}
	for _, r := range a {
		r.ServiceRulesCompared = true
	}
	a["node-2"].ServiceRulesDiffer = []string{"web/web 80/TCP"}
	rep := Reduce(s, spec, a, nil)
	var got []string
	for _, f := range rep.Findings {
		if f.ID == "service-rules-missing" {
			got = append(got, f.Node)
		}
	}
	if !slices.Equal(got, []string{"node-2"}) {
		t.Fatalf("service-rules-missing findings on %v, want node-2 only (its agent saw the difference)", got)
	}
	for _, c := range rep.Checks {
		if c.ID == "service-rules-missing" && c.Node == "node-1" {
			if c.Status != finding.Skipped || !strings.Contains(c.Reason, "changed in the API since") {
				t.Fatalf("check on node-1: %s %q, want skipped (the API changed during the check)", c.Status, c.Reason)
			}
			return
		}
	}
	t.Fatal("no service-rules-missing check for node-1")
}

// A Service whose numeric targetPort no selected pod declares keeps its endpoints (the
// EndpointSlice controller resolves numbers blindly): that is service-no-endpoints' case,
// not a listener to probe on every node (endpoint-not-listening would repeat it per pod).
func TestEndpointProbesSkipUndeclaredTargetPorts(t *testing.T) {
	s := healthy()
	before := BuildSpec(s, SpecOptions{})
	for i := range s.EndpointSlices {
		for j := range s.EndpointSlices[i].Ports {
			s.EndpointSlices[i].Ports[j].Port = 8089
		}
	}
	after := BuildSpec(s, SpecOptions{})
	for _, e := range after.Endpoints {
		if e.Pod != "" && strings.HasSuffix(e.Addr, ":8089") { // a pod unknown to the API snapshot cannot be judged
			t.Fatalf("endpoint probe of an undeclared target port: %+v", e)
		}
	}
	if len(before.Endpoints) == 0 || len(after.Endpoints) == 0 {
		t.Fatalf("endpoint probes before %d, after %d: want some in both (the pods' declared ports stay probed)", len(before.Endpoints), len(after.Endpoints))
	}
}
