package cluster

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/netdoctor/netdoctor/internal/finding"
)

// Flannel's node annotations.
const (
	AnnotationFlannelPublicIP    = "flannel.alpha.coreos.com/public-ip"
	AnnotationFlannelBackendData = "flannel.alpha.coreos.com/backend-data"
)

func init() {
	register(&Rule{ID: "overlay-source-mismatch", Severity: finding.Critical, Title: "a node sends tunnel traffic from an address its peers do not know", Run: ruleOverlaySourceMismatch})
	register(&Rule{ID: "node-config-drift", Severity: finding.Warning, Title: "a node differs from the majority", Run: ruleNodeConfigDrift})
	register(&Rule{ID: "dns-resolution-failed", Severity: finding.Critical, Title: "names fail from a node", Run: ruleDNSResolutionFailed})
}

// vtepMAC reads flannel's backend-data annotation ({"VNI":1,"VtepMAC":"..."}).
func vtepMAC(n *Node) string {
	var bd struct {
		VtepMAC string `json:"VtepMAC"`
	}
	if err := json.Unmarshal([]byte(n.Annotations[AnnotationFlannelBackendData]), &bd); err != nil {
		return ""
	}
	return strings.ToLower(bd.VtepMAC)
}

func ruleOverlaySourceMismatch(in *Input, r *Rule) ([]finding.Finding, []finding.Check) {
	s := in.Cluster
	anyFlannel := false
	for _, n := range s.Nodes {
		if n.Annotations[AnnotationFlannelPublicIP] != "" {
			anyFlannel = true
		}
	}
	if !anyFlannel {
		return nil, skipAll(r, "no node has flannel's public-ip annotation (not a flannel-style overlay)")
	}
	if len(in.Agents) == 0 {
		return nil, skipAll(r, noAgents)
	}
	var fs []finding.Finding
	var cs []finding.Check
	for i := range s.Nodes {
		n := &s.Nodes[i]
		pub := n.Annotations[AnnotationFlannelPublicIP]
		a := in.Agents[n.Name]
		if pub == "" || a == nil {
			reason := "no flannel public-ip annotation on the node"
			if a == nil {
				reason = "no agent result from the node"
			}
			cs = append(cs, r.check(n.Name, finding.Skipped, reason))
			continue
		}
		var ev []string
		src := a.Summary.TunnelSource
		if src != "" && src != pub {
			ev = append(ev, fmt.Sprintf("%s sends its tunnel traffic from %s, but its %s annotation (what peers send to) is %s", n.Name, src, AnnotationFlannelPublicIP, pub))
		}
		for _, t := range a.Summary.Tunnels {
			if t.Local != "" && t.Local != pub {
				ev = append(ev, fmt.Sprintf("%s %s local address %s differs from the public-ip annotation %s", n.Name, t.Device, t.Local, pub))
			}
		}
		mac := vtepMAC(n)
		if mac != "" {
			for _, peer := range agentNodes(in) {
				if peer == n.Name {
					continue
				}
				if dst, ok := in.Agents[peer].Summary.FDB[mac]; ok && dst != pub && (src == "" || dst != src) {
					ev = append(ev, fmt.Sprintf("peer %s's FDB sends %s's VTEP %s to %s, not to %s", peer, n.Name, mac, dst, orNone(src)))
				}
			}
		}
		if len(ev) == 0 {
			cs = append(cs, r.check(n.Name, finding.Pass, ""))
			continue
		}
		if len(ev) > 10 {
			ev = append(ev[:10:10], fmt.Sprintf("... and %d more", len(ev)-10))
		}
		ev = append(ev, fmt.Sprintf("InternalIP of %s: %s; uplink addresses: %s", n.Name, orNone(n.InternalIP), orNone(strings.Join(a.Summary.UplinkAddresses, ", "))))
		fs = append(fs, r.finding(n.Name, "node/"+n.Name, "node "+n.Name+" sends overlay traffic from an address its peers do not know: requests arrive, replies never come back",
			ev, "remove the extra address from the uplink (or pin flannel with --iface/--public-ip to the address peers know) and restart flannel; verify `ip -d link show flannel.1` local matches the public-ip annotation and peers' `bridge fdb show dev flannel.1`"))
		cs = append(cs, r.check(n.Name, finding.Fail, ""))
	}
	return fs, cs
}

// driftItems flattens a node's summary into comparable "dimension key" ->
// value pairs.
func driftItems(a *AgentResult) map[string]string {
	out := map[string]string{}
	for k, v := range a.Summary.Sysctls {
		out["sysctl "+k] = v
	}
	for rt, n := range a.Summary.Routes {
		out["route "+rt] = fmt.Sprintf("%d", n)
	}
	for k, v := range a.Summary.Netfilter {
		out["netfilter "+k] = v
	}
	if kp := a.Summary.KubeProxy; kp != nil {
		for k, v := range kp.Flags {
			if k == "hostname-override" || k == "bind-address" || k == "healthz-bind-address" || k == "metrics-bind-address" {
				continue // differ per node by design
			}
			out["kube-proxy --"+k] = v
		}
		if kp.ConfigUnreadable != "" {
			// Settings its config file may hold are unknown here, not absent.
			for _, k := range []string{"cluster-cidr", "proxy-mode"} {
				if _, ok := kp.Flags[k]; !ok {
					out["kube-proxy --"+k] = unknownValue
				}
			}
		}
	}
	return out
}

// unknownValue marks a setting a node could not report: it neither counts
// toward the majority nor makes the node odd.
const unknownValue = "\x00unknown"

func ruleNodeConfigDrift(in *Input, r *Rule) ([]finding.Finding, []finding.Check) {
	nodes := agentNodes(in)
	if len(nodes) < 3 {
		return nil, skipAll(r, fmt.Sprintf("needs agent facts from at least 3 nodes to find a majority (have %d)", len(nodes)))
	}
	items := map[string]map[string]string{}
	keys := map[string]bool{}
	for _, n := range nodes {
		items[n] = driftItems(in.Agents[n])
		for k := range items[n] {
			keys[k] = true
		}
	}
	diffs := map[string][]string{}
	for k := range keys {
		count := map[string]int{}
		known := 0
		for _, n := range nodes {
			if items[n][k] == unknownValue {
				continue
			}
			count[items[n][k]]++ // "" = absent
			known++
		}
		major, best := "", 0
		for v, c := range count {
			if c > best || (c == best && v < major) {
				major, best = v, c
			}
		}
		if best*2 <= known || known < 3 {
			continue // no strict majority: nothing is odd
		}
		for _, n := range nodes {
			v := items[n][k]
			if v == major || v == unknownValue {
				continue
			}
			diffs[n] = append(diffs[n], fmt.Sprintf("%s: %s on %s, %s on %d of %d nodes", k, shown(v), n, shown(major), best, known))
		}
	}
	var fs []finding.Finding
	var cs []finding.Check
	for _, n := range nodes {
		d := diffs[n]
		if len(d) == 0 {
			cs = append(cs, r.check(n, finding.Pass, ""))
			continue
		}
		sort.Strings(d)
		ev := d
		if len(ev) > 15 {
			ev = append(ev[:15:15], fmt.Sprintf("... and %d more differences", len(d)-15))
		}
		fs = append(fs, r.finding(n, "node/"+n, fmt.Sprintf("node %s differs from the majority of nodes in %d setting(s); first: %s", n, len(d), d[0]), ev,
			"compare the node with a good one (sysctl -a, ip route, iptables-save, kube-proxy flags) and bring it in line; the differences above are where to start"))
		cs = append(cs, r.check(n, finding.Fail, ""))
	}
	return fs, cs
}

func shown(v string) string {
	if v == "" {
		return "absent"
	}
	return v
}

var dnsKindNames = map[string]string{
	KindDNSShort:    "same-namespace short names",
	KindDNSNS:       "other-namespace names (svc.ns)",
	KindDNSFQDN:     "fully qualified cluster names",
	KindDNSExternal: "external names",
}

func ruleDNSResolutionFailed(in *Input, r *Rule) ([]finding.Finding, []finding.Check) {
	if in.Matrix == nil || len(in.Agents) == 0 {
		return nil, skipAll(r, "needs the connectivity matrix (agents' DNS probes)")
	}
	dnsKinds := []string{KindDNSShort, KindDNSNS, KindDNSFQDN, KindDNSExternal}
	byNode := map[string][]MatrixRow{}
	for _, row := range in.Matrix.Rows {
		byNode[row.Node] = append(byNode[row.Node], row)
	}
	var fs []finding.Finding
	var cs []finding.Check
	for _, n := range agentNodes(in) {
		var failing, passing, ev []string
		probed := false
		for _, row := range byNode[n] {
			for _, k := range dnsKinds {
				c, ok := row.Cells[k]
				if !ok || c.Status == ProbeSkipped || c.Status == ProbeError {
					continue
				}
				probed = true
				if c.Status == ProbeOK {
					passing = append(passing, dnsKindNames[k]+" ("+row.Netns+")")
					continue
				}
				failing = append(failing, dnsKindNames[k]+" ("+row.Netns+")")
				ev = append(ev, fmt.Sprintf("%s netns on %s, %s: %s", row.Netns, n, k, strings.Join(c.Failed, "; ")))
			}
		}
		if !probed {
			cs = append(cs, r.check(n, finding.Skipped, "no DNS probe ran on this node"))
			continue
		}
		if len(failing) == 0 {
			cs = append(cs, r.check(n, finding.Pass, ""))
			continue
		}
		if culprit := dnsOnUnreachable(in, n); culprit != "" && len(failing) > 0 {
			f := r.finding(n, "node/"+n, "from "+n+", names fail because "+culprit, ev,
				"fix the unreachable node first (see its findings); the DNS Service load-balances over every CoreDNS pod, so one unreachable CoreDNS pod makes some lookups time out from every node")
			f.Severity = finding.Info
			fs = append(fs, f)
			cs = append(cs, r.check(n, finding.Pass, "failures explained by "+culprit))
			continue
		}
		if onlyExternal(failing) && in.Spec != nil && len(UpstreamServers(in.Spec)) > 0 {
			// Cluster names resolve: the upstream side, which
			// dns-upstream-failed proves by asking the upstream directly.
			f := r.finding(n, "node/"+n, "from "+n+", only external names fail; cluster names resolve: see dns-upstream-failed", ev,
				"see the dns-upstream-failed finding (the upstream asked directly)")
			f.Severity = finding.Info
			fs = append(fs, f)
			cs = append(cs, r.check(n, finding.Pass, "only external names fail: dns-upstream-failed"))
			continue
		}
		others := oddDNSNodes(in.Matrix, n)
		msg := "from " + n + ", " + strings.Join(failing, ", ") + " fail"
		if len(passing) > 0 {
			msg += "; " + strings.Join(passing, ", ") + " resolve"
		}
		if others != "" {
			msg += "; " + others
		}
		if in.Spec != nil {
			ev = append(ev, "DNS server asked: "+orNone(in.Spec.DNSServer))
		}
		fs = append(fs, r.finding(n, "node/"+n, msg, ev,
			"from a pod on "+n+": nslookup kubernetes.default and cat /etc/resolv.conf; check the node's path to the DNS Service (kube-proxy rules for kube-system/kube-dns on this node, pod routes, the overlay to the CoreDNS pods' nodes)"))
		cs = append(cs, r.check(n, finding.Fail, ""))
	}
	return fs, cs
}

// onlyExternal is true when every failing DNS kind (as named in
// dnsKindNames, with the netns) is the external one.
func onlyExternal(failing []string) bool {
	for _, f := range failing {
		if !strings.HasPrefix(f, dnsKindNames[KindDNSExternal]+" (") {
			return false
		}
	}
	return len(failing) > 0
}

// oddDNSNodes says whether the other nodes resolve fine, e.g. "the other 2
// nodes resolve every kind".
func oddDNSNodes(m *Matrix, node string) string {
	others, bad := map[string]bool{}, map[string]bool{}
	for _, row := range m.Rows {
		if row.Node == node {
			continue
		}
		others[row.Node] = true
		for _, k := range []string{KindDNSShort, KindDNSNS, KindDNSFQDN, KindDNSExternal} {
			if c, ok := row.Cells[k]; ok && (c.Status == ProbeFail || c.Status == "partial") {
				bad[row.Node] = true
			}
		}
	}
	if len(others) == 0 {
		return ""
	}
	if len(bad) == 0 {
		return fmt.Sprintf("the other %d node(s) resolve every kind: only %s fails", len(others), node)
	}
	return fmt.Sprintf("%d of %d other nodes fail too", len(bad), len(others))
}

// unreachableNodes are the peers that most of the rows probing them cannot
// reach (pod ICMP): the odd node out of the matrix.
func unreachableNodes(m *Matrix) map[string]bool {
	failed := map[string]int{}
	for _, row := range m.Rows {
		c, ok := row.Cells[KindPodICMP]
		if !ok {
			continue
		}
		for _, f := range c.Failed {
			peer, _, _ := strings.Cut(f, ":")
			failed[peer+"\x00"+row.Node]++
		}
	}
	out := map[string]bool{}
	rowsByPeer := map[string]map[string]bool{}
	for k := range failed {
		peer, node, _ := strings.Cut(k, "\x00")
		if peer == node {
			continue
		}
		if rowsByPeer[peer] == nil {
			rowsByPeer[peer] = map[string]bool{}
		}
		rowsByPeer[peer][node] = true
	}
	nodes := map[string]bool{}
	for _, row := range m.Rows {
		nodes[row.Node] = true
	}
	for peer, from := range rowsByPeer {
		// every other node fails to reach it (at least two of them)
		if len(from) >= 2 && len(from) >= len(nodes)-1 {
			out[peer] = true
		}
	}
	return out
}

// dnsOnUnreachable explains DNS failures from node by a CoreDNS endpoint on
// a node the others cannot reach, when node itself is not that node and
// other CoreDNS endpoints exist. It returns the explanation or "".
func dnsOnUnreachable(in *Input, node string) string {
	bad := unreachableNodes(in.Matrix)
	if len(bad) == 0 || bad[node] {
		return ""
	}
	svc := dnsService(in.Cluster)
	if svc == nil {
		return ""
	}
	var on, elsewhere []string
	for _, e := range slicesOf(in.Cluster)[svc.Key()] {
		for _, ep := range e.Endpoints {
			if !ep.Ready {
				continue
			}
			if bad[ep.Node] {
				on = append(on, ep.Pod+" on "+ep.Node)
			} else {
				elsewhere = append(elsewhere, ep.Pod)
			}
		}
	}
	if len(on) == 0 {
		return ""
	}
	sort.Strings(on)
	if len(elsewhere) == 0 {
		return "every CoreDNS endpoint (" + strings.Join(on, ", ") + ") is on a node the other nodes cannot reach"
	}
	return "CoreDNS endpoint " + strings.Join(on, ", ") + " is on a node the other nodes cannot reach"
}
