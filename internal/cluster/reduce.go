package cluster

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/netdoctor/netdoctor/internal/finding"
)

// Labels of the probe target pods and Service that `netdoctor install`
// creates (a pod on every node, in the pod network).
const (
	TargetName      = "netdoctor-target"
	LabelAppName    = "app.kubernetes.io/name"
	TargetPort      = 8473
	maxEndpointsPer = 50 // endpoint probes per node, at most
)

// SpecOptions tune BuildSpec.
type SpecOptions struct {
	K            int    // peers per node (0 = DefaultPeers)
	Seed         int64  // rotation of the peers
	ExternalName string // a name outside the cluster for dns-external ("" = not probed)
	PodMTU       int    // DF probe size (0 = the agent reads the interface MTU)
	OverlayPort  int    // 0 = 8472 when nodes carry flannel annotations
	Nodes        []string
	// Upstreams are DNS servers (ip or ip:port) that should answer the
	// external name directly, asked beside the Corefile's forward targets.
	Upstreams []string
}

// BuildSpec derives the probe plan's input from the cluster snapshot: one
// target pod per node (netdoctor's target pods first, else any running pod
// with a TCP port), the ClusterIP and DNS targets, and the Service endpoints
// each node checks for a listener.
func BuildSpec(s *Snapshot, o SpecOptions) *ProbeSpec {
	spec := &ProbeSpec{Seed: o.Seed, K: o.K, PodMTU: o.PodMTU, OverlayPort: o.OverlayPort}
	if spec.K <= 0 {
		spec.K = DefaultPeers
	}
	want := map[string]bool{}
	for _, n := range o.Nodes {
		want[n] = true
	}
	flannel := false
	for _, n := range s.Nodes {
		if len(want) > 0 && !want[n.Name] {
			continue
		}
		if n.Annotations[AnnotationFlannelPublicIP] != "" {
			flannel = true
		}
		spec.Targets = append(spec.Targets, targetOn(s, n))
	}
	sort.Slice(spec.Targets, func(i, j int) bool { return spec.Targets[i].Node < spec.Targets[j].Node })
	if spec.OverlayPort == 0 && flannel {
		spec.OverlayPort = 8472
	}
	domain := clusterDomain(s)
	var kubeIP, dnsIP, targetIP string
	var targetSvcPort int32
	for _, svc := range s.Services {
		if svc.Headless() {
			continue
		}
		switch {
		case svc.Namespace == "default" && svc.Name == "kubernetes":
			kubeIP = svc.ClusterIPs[0]
		case svc.Namespace == AgentNamespace && svc.Name == TargetName && len(svc.Ports) > 0:
			targetIP, targetSvcPort = svc.ClusterIPs[0], svc.Ports[0].Port
		}
	}
	if d := dnsService(s); d != nil && !d.Headless() {
		dnsIP = d.ClusterIPs[0]
	}
	ready, _ := readyEndpoints(slicesOf(s)[AgentNamespace+"/"+TargetName])
	switch {
	case targetIP != "" && ready > 0:
		spec.ClusterIP, spec.ClusterName = joinHostPort(targetIP, int(targetSvcPort)), AgentNamespace+"/"+TargetName
	case kubeIP != "":
		spec.ClusterIP, spec.ClusterName = joinHostPort(kubeIP, 443), "default/kubernetes"
	}
	spec.DNSServer = dnsIP
	if dnsIP != "" {
		if targetIP != "" {
			spec.DNS = append(spec.DNS, DNSQuery{Kind: KindDNSShort, Shown: TargetName + " (from " + AgentNamespace + ")", Name: TargetName + "." + AgentNamespace + ".svc." + domain + ".", Expect: targetIP})
		} else if kubeIP != "" {
			spec.DNS = append(spec.DNS, DNSQuery{Kind: KindDNSShort, Shown: "kubernetes (from default)", Name: "kubernetes.default.svc." + domain + ".", Expect: kubeIP})
		}
		spec.DNS = append(spec.DNS, DNSQuery{Kind: KindDNSNS, Shown: "kube-dns.kube-system", Name: "kube-dns.kube-system.svc." + domain + ".", Expect: dnsIP})
		if kubeIP != "" {
			spec.DNS = append(spec.DNS, DNSQuery{Kind: KindDNSFQDN, Shown: "kubernetes.default.svc." + domain, Name: "kubernetes.default.svc." + domain + ".", Expect: kubeIP})
		}
		if o.ExternalName != "" {
			n := strings.TrimSuffix(o.ExternalName, ".") + "."
			spec.DNS = append(spec.DNS, DNSQuery{Kind: KindDNSExternal, Shown: o.ExternalName, Name: n})
			spec.Upstreams, spec.UpstreamWhy = CorefileUpstreams(s.ConfigMaps[KubeSystem+"/coredns"]["Corefile"])
			spec.UpstreamRefs = o.Upstreams
		}
	}
	spec.Endpoints = endpointTargets(s, want)
	spec.ClusterDomain = domain
	spec.ResolvPods = resolvPods(s, want)
	return spec
}

func targetOn(s *Snapshot, n Node) NodeTarget {
	t := NodeTarget{Node: n.Name, NodeIP: n.InternalIP}
	var best *Pod
	bestScore := 0
	bestPort := 0
	for i := range s.Pods {
		p := &s.Pods[i]
		if p.Node != n.Name || p.HostNetwork || p.Phase != "Running" || len(p.PodIPs) == 0 || p.Deleting {
			continue
		}
		score, port := 1, 0
		for _, c := range p.Containers {
			for _, cp := range c.Ports {
				if (cp.Protocol == "" || cp.Protocol == "TCP") && port == 0 {
					port = int(cp.Port)
				}
			}
		}
		if port > 0 && p.Ready {
			score = 2
		}
		if p.Labels[LabelAppName] == TargetName && p.Ready {
			score = 3
		}
		if p.Namespace == KubeSystem {
			// Never probe from (or to) a system pod when anything else
			// runs there: a CoreDNS pod asking the DNS Service may be sent
			// to itself (hairpin), which says nothing about the node.
			score = 0
		}
		if best == nil || score > bestScore || (score == bestScore && p.Namespace+"/"+p.Name < best.Namespace+"/"+best.Name) {
			best, bestScore, bestPort = p, score, port
		}
	}
	if best != nil {
		t.Pod = best.Namespace + "/" + best.Name
		t.PodIP = best.PodIPs[0]
		if best.Ready {
			t.PodPort = bestPort
		}
	}
	return t
}

// CorefileUpstreams returns the addresses of the root zone's "forward ."
// line of a Corefile (ip or ip:port, "dns://" stripped), and why none is
// returned: no such line, or it forwards to a resolv.conf file or over
// TLS/HTTPS, which the agents do not ask (name a server with --upstream).
func CorefileUpstreams(corefile string) ([]string, string) {
	if strings.TrimSpace(corefile) == "" {
		return nil, "no Corefile in configmap kube-system/coredns"
	}
	var out, other []string
	found := false
	for _, line := range strings.Split(corefile, "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "forward" || f[1] != "." {
			continue
		}
		found = true
		for _, to := range f[2:] {
			if to == "{" {
				break
			}
			to = strings.TrimPrefix(to, "dns://")
			if ap, err := netip.ParseAddrPort(to); err == nil {
				out = append(out, ap.String())
			} else if a, err := netip.ParseAddr(to); err == nil {
				out = append(out, a.String())
			} else {
				other = append(other, to)
			}
		}
	}
	switch {
	case !found:
		return nil, "the Corefile has no \"forward .\" line"
	case len(out) == 0:
		return nil, "the Corefile forwards to " + strings.Join(other, " ") + ", not to an address the agents can ask (name one with --upstream)"
	}
	return out, ""
}

// clusterDomain reads the cluster domain from CoreDNS's Corefile
// ("kubernetes cluster.local in-addr.arpa ..."), default cluster.local.
func clusterDomain(s *Snapshot) string {
	for _, line := range strings.Split(s.ConfigMaps[KubeSystem+"/coredns"]["Corefile"], "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "kubernetes" {
			return strings.TrimSuffix(f[1], ".")
		}
	}
	return "cluster.local"
}

func endpointTargets(s *Snapshot, want map[string]bool) []EndpointTarget {
	svcs := map[string]*Service{}
	for i := range s.Services {
		svcs[s.Services[i].Key()] = &s.Services[i]
	}
	// The TCP container ports each pod declares: an endpoint port a pod that declares ports
	// does not declare is service-no-endpoints' targetPort mismatch, not a listener to probe.
	declared := map[string]map[int32]bool{}
	for _, p := range s.Pods {
		for _, c := range p.Containers {
			for _, cp := range c.Ports {
				if cp.Protocol == "" || cp.Protocol == "TCP" {
					k := p.Namespace + "/" + p.Name
					if declared[k] == nil {
						declared[k] = map[int32]bool{}
					}
					declared[k][cp.Port] = true
				}
			}
		}
	}
	per := map[string]int{}
	var out []EndpointTarget
	seen := map[string]bool{}
	for _, e := range s.EndpointSlices {
		svc := svcs[e.Namespace+"/"+e.Service]
		if svc == nil || len(svc.Selector) == 0 {
			continue
		}
		for _, ep := range e.Endpoints {
			if !ep.Ready || ep.Node == "" || (len(want) > 0 && !want[ep.Node]) {
				continue
			}
			for _, port := range e.Ports {
				if port.Protocol != "" && port.Protocol != "TCP" {
					continue
				}
				if d := declared[ep.Pod]; len(d) > 0 && !d[port.Port] {
					continue
				}
				for _, a := range ep.Addresses {
					addr := joinHostPort(a, int(port.Port))
					if seen[ep.Node+addr] || per[ep.Node] >= maxEndpointsPer {
						continue
					}
					seen[ep.Node+addr] = true
					per[ep.Node]++
					out = append(out, EndpointTarget{Node: ep.Node, Service: svc.Key(), Pod: ep.Pod, Addr: addr})
				}
			}
		}
	}
	// Pods that declare a TCP port but back no Service: their declared
	// ports must have a listener on the pod IP too.
	for _, p := range s.Pods {
		if p.HostNetwork || p.Phase != "Running" || len(p.PodIPs) == 0 || p.Node == "" || p.Deleting || (len(want) > 0 && !want[p.Node]) {
			continue
		}
		for _, c := range p.Containers {
			for _, cp := range c.Ports {
				if cp.Protocol != "" && cp.Protocol != "TCP" {
					continue
				}
				addr := joinHostPort(p.PodIPs[0], int(cp.Port))
				if seen[p.Node+addr] || per[p.Node] >= maxEndpointsPer {
					continue
				}
				seen[p.Node+addr] = true
				per[p.Node]++
				out = append(out, EndpointTarget{Node: p.Node, Pod: p.Namespace + "/" + p.Name, Addr: addr})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Node != out[j].Node {
			return out[i].Node < out[j].Node
		}
		return out[i].Service+out[i].Addr < out[j].Service+out[j].Addr
	})
	return out
}

// CheckReport is the output of `netdoctor check`: the v1 report plus the
// connectivity matrix.
type CheckReport struct {
	*finding.Report
	Matrix *Matrix `json:"matrix,omitempty"`
}

// Reduce runs the cluster rules over the snapshot and the agents' results
// and builds the report and the matrix. results may be nil (--no-agent);
// missing names the nodes whose agent did not answer, with why.
func Reduce(s *Snapshot, spec *ProbeSpec, results map[string]*AgentResult, missing map[string]string) *CheckReport {
	in := &Input{Cluster: s, Agents: results, Missing: missing, Spec: spec}
	if spec != nil && results != nil {
		in.Matrix = BuildMatrix(spec, results, missing)
	}
	fs, cs := Evaluate(in)
	fs = dedupe(fs)
	for k, v := range s.Errors {
		cs = append(cs, finding.Check{ID: "api " + k, Status: finding.Error, Reason: v})
	}
	sort.SliceStable(cs, func(i, j int) bool {
		if cs[i].ID != cs[j].ID {
			return cs[i].ID < cs[j].ID
		}
		return cs[i].Node < cs[j].Node
	})
	return &CheckReport{Report: finding.NewReport(fs, cs), Matrix: in.Matrix}
}

// Verdict is the report's one-line summary, e.g. "2 critical, 1 warning on
// 3 nodes (1 node did not answer)".
func (r *CheckReport) Verdict(nodes int) string {
	s := r.Summary
	v := "healthy: no critical or warning finding"
	if s.Critical+s.Warning > 0 {
		v = fmt.Sprintf("%d critical, %d warning", s.Critical, s.Warning)
	}
	v += fmt.Sprintf(" on %d node(s)", nodes)
	missing := 0
	for _, c := range r.Checks {
		if c.ID == "agent" && c.Status == finding.Error {
			missing++
		}
	}
	if missing > 0 {
		v += fmt.Sprintf(" (%d node(s) did not answer)", missing)
	}
	return v
}

// dedupe merges findings with the same ID and node (a cluster rule and the
// node rule of the same fault): the first is kept, with the evidence of the
// others appended.
func dedupe(fs []finding.Finding) []finding.Finding {
	idx := map[string]int{}
	var out []finding.Finding
	for _, f := range fs {
		k := f.ID + "\x00" + f.Node + "\x00"
		if f.Node == "" {
			k += f.Subject
		}
		i, ok := idx[k]
		if !ok {
			idx[k] = len(out)
			out = append(out, f)
			continue
		}
		have := map[string]bool{}
		for _, e := range out[i].Evidence {
			have[e] = true
		}
		for _, e := range f.Evidence {
			if !have[e] {
				out[i].Evidence = append(out[i].Evidence, e)
			}
		}
		if f.Severity.Rank() > out[i].Severity.Rank() {
			out[i].Severity = f.Severity
		}
	}
	return out
}
