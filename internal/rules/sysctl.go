package rules

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/netdoctor/netdoctor/internal/facts"
	"github.com/netdoctor/netdoctor/internal/finding"
)

func init() {
	Register(Rule{
		ID:       "ip-forward-disabled",
		Severity: finding.Critical,
		Title:    "net.ipv4.ip_forward is on, so the node routes pod traffic",
		Needs:    []string{"sysctls"},
		Docs:     "https://kubernetes.io/docs/setup/production-environment/container-runtimes/#prerequisite-ipv4-forwarding-optional",
		Run:      runIPForward,
	})
	Register(Rule{
		ID:       "bridge-nf-disabled",
		Severity: finding.Critical,
		Title:    "bridged pod traffic goes through iptables (br_netfilter, bridge-nf-call-iptables=1)",
		Needs:    []string{"sysctls", "links"},
		Docs:     "https://kubernetes.io/docs/concepts/extend-kubernetes/compute-storage-net/network-plugins/#network-plugin-requirements",
		Run:      runBridgeNF,
	})
	Register(Rule{
		ID:       "rp-filter-strict",
		Severity: finding.Warning,
		Title:    "no strict reverse-path filtering on interfaces where traffic is asymmetric",
		Needs:    []string{"sysctls", "links", "routes"},
		Docs:     "https://docs.kernel.org/networking/ip-sysctl.html (rp_filter)",
		Run:      runRPFilter,
	})
}

// sysctl returns a sysctl's value as read, and whether it was present.
func (in *Input) sysctl(key string) (string, bool) {
	v, ok := in.Node.Sysctls[key]
	return strings.TrimSpace(v), ok
}

// ifaceSysctl reads a per-interface sysctl, accepting both spellings of an
// interface name with a dot (flannel.1 or flannel/1, as sysctl(8) prints it).
func (in *Input) ifaceSysctl(family, iface, name string) (string, string, bool) {
	for _, n := range []string{iface, strings.ReplaceAll(iface, ".", "/")} {
		k := fmt.Sprintf("net.%s.conf.%s.%s", family, n, name)
		if v, ok := in.sysctl(k); ok {
			return k, v, true
		}
	}
	return fmt.Sprintf("net.%s.conf.%s.%s", family, iface, name), "", false
}

// sysctlMissing explains why a sysctl is absent: the collector's reason, or
// "not present" when it recorded none.
func (in *Input) sysctlMissing(key string) string {
	if why := in.Node.Errors["sysctl "+key]; why != "" {
		return why
	}
	return key + " is not in the snapshot"
}

func runIPForward(in *Input) Result {
	v, ok := in.sysctl("net.ipv4.ip_forward")
	if !ok {
		return Skip("%s", in.sysctlMissing("net.ipv4.ip_forward"))
	}
	if v != "0" {
		// Dual-stack pods need IPv6 forwarding too.
		if v6, ok := in.sysctl("net.ipv6.conf.all.forwarding"); ok && v6 == "0" {
			if pods := in.ipv6PodEvidence(); pods != "" {
				return Result{Findings: []finding.Finding{{
					Subject:  "net.ipv6.conf.all.forwarding",
					Message:  "IPv6 forwarding is off on a node with IPv6 pods: their IPv6 traffic to other nodes and Services is dropped (IPv4 works, so dual-stack clients may only see slow fallbacks)",
					Evidence: []string{"sysctl net.ipv4.ip_forward = " + v, "sysctl net.ipv6.conf.all.forwarding = 0", pods},
					Remediation: "sysctl -w net.ipv6.conf.all.forwarding=1 and persist it in /etc/sysctl.d/; " +
						"verify: sysctl net.ipv6.conf.all.forwarding prints 1 and a pod reaches a pod on another node over IPv6",
				}}}
			}
		}
		return Pass("net.ipv4.ip_forward = %s", v)
	}
	ev := []string{"sysctl net.ipv4.ip_forward = 0"}
	t := in.Topology()
	if !in.looksLikeNode() {
		return Result{Findings: []finding.Finding{{
			Severity:    finding.Info,
			Subject:     "net.ipv4.ip_forward",
			Message:     "IPv4 forwarding is off; no pod network is visible here (no pod bridge, overlay, pod CIDR or kube-proxy rules), so this only matters if this machine is to run pods",
			Evidence:    ev,
			Remediation: "on a Kubernetes node: sysctl -w net.ipv4.ip_forward=1 and persist it in /etc/sysctl.d/",
		}}}
	}
	if t.PodBridge != nil {
		ev = append(ev, fmt.Sprintf("pod bridge %s with %d pod veth(s): their traffic to other nodes and Services must be forwarded", t.PodBridge.Name, len(t.PodVeths)))
	}
	return Result{Findings: []finding.Finding{{
		Subject:  "net.ipv4.ip_forward",
		Message:  "IPv4 forwarding is off: the node drops every packet from its pods to other nodes, Services outside the node and the outside world (connections time out with repeated SYNs)",
		Evidence: ev,
		Remediation: "sysctl -w net.ipv4.ip_forward=1; make it persistent with `echo net.ipv4.ip_forward=1 > /etc/sysctl.d/99-kubernetes.conf` and find what turned it off (security baseline, a sysctl file, a reboot); " +
			"verify: sysctl net.ipv4.ip_forward prints 1 and a pod reaches a pod on another node",
	}}}
}

func runBridgeNF(in *Input) Result {
	t := in.Topology()
	if len(in.Node.Sysctls) == 0 {
		return Skip("no sysctls in the snapshot")
	}
	v, ok := in.sysctl("net.bridge.bridge-nf-call-iptables")
	if ok && v != "0" {
		return Pass("net.bridge.bridge-nf-call-iptables = %s", v)
	}
	why := in.Node.Errors["sysctl net.bridge.bridge-nf-call-iptables"]
	if !ok && why != "" && !strings.Contains(why, "not loaded") {
		return Skip("%s", why)
	}
	if t.PodBridge == nil {
		if ok {
			return Pass("bridge-nf-call-iptables = 0 but no bridge with pod veths on this node")
		}
		return Pass("br_netfilter not loaded and no bridge with pod veths on this node")
	}
	bridge := fmt.Sprintf("bridge %s has %d veth port(s): %s", t.PodBridge.Name, len(t.PodVeths), linkNames(t.PodVeths))
	var f finding.Finding
	if ok { // present and 0
		f = finding.Finding{
			Subject:  "net.bridge.bridge-nf-call-iptables",
			Message:  "bridge-nf-call-iptables is 0: traffic between pods on the same bridge skips iptables, so kube-proxy's Service DNAT is not applied (host unreachable / connection refused to Services backed by a pod on this node)",
			Evidence: []string{"sysctl net.bridge.bridge-nf-call-iptables = 0", bridge},
			Remediation: "sysctl -w net.bridge.bridge-nf-call-iptables=1 (and net.bridge.bridge-nf-call-ip6tables=1 for IPv6); persist it in /etc/sysctl.d/; " +
				"verify: a pod reaches a Service whose endpoint is another pod on the same node",
		}
	} else {
		f = finding.Finding{
			Subject:  "br_netfilter",
			Message:  "the br_netfilter module is not loaded (no net.bridge.bridge-nf-call-iptables): bridged pod traffic skips iptables, so kube-proxy's Service DNAT is not applied between pods on this node",
			Evidence: []string{"sysctl net.bridge.bridge-nf-call-iptables: " + orStr(why, "not present (br_netfilter not loaded)"), bridge},
			Remediation: "modprobe br_netfilter && sysctl -w net.bridge.bridge-nf-call-iptables=1; persist with `echo br_netfilter > /etc/modules-load.d/k8s.conf`; " +
				"verify: sysctl net.bridge.bridge-nf-call-iptables prints 1",
		}
	}
	return Result{Findings: []finding.Finding{f}}
}

func linkNames(ls []*facts.Link) string {
	names := make([]string, 0, len(ls))
	for _, l := range ls {
		names = append(names, l.Name)
	}
	return strings.Join(names, ", ")
}

func runRPFilter(in *Input) Result {
	t := in.Topology()
	allKey := "net.ipv4.conf.all.rp_filter"
	allV, ok := in.sysctl(allKey)
	if !ok {
		return Skip("%s is not in the snapshot", allKey)
	}
	all, _ := strconv.Atoi(allV)
	// Why traffic may be asymmetric on this node.
	var why []string
	uplinks := t.Uplinks()
	if len(uplinks) > 1 {
		var desc []string
		for _, l := range uplinks {
			var as []string
			for _, a := range t.GlobalV4(l.Name) {
				as = append(as, a.Prefix.String())
			}
			desc = append(desc, l.Name+" "+strings.Join(as, " "))
		}
		why = append(why, fmt.Sprintf("%d uplinks with global addresses (%s): replies may leave by another interface than the request came in", len(uplinks), strings.Join(desc, "; ")))
	}
	var defaults []string
	for _, r := range t.Main {
		if r.Dst == "default" && r.Family != 6 {
			defaults = append(defaults, FormatRoute(r))
		}
	}
	if len(defaults) > 1 {
		why = append(why, "several default routes: "+strings.Join(defaults, "; "))
	}
	for _, r := range in.Node.Rules {
		if r.Family == 6 || r.Priority == 0 || r.Priority == 32766 || r.Priority == 32767 {
			continue
		}
		why = append(why, fmt.Sprintf("policy routing rule: %s", FormatPolicyRule(r)))
	}
	if t.Overlay != nil && t.Overlay.VXLAN != nil && t.Overlay.VXLAN.Device != "" {
		for _, pe := range t.Peers {
			if !pe.Underlay.IsValid() {
				continue
			}
			if r, ok := t.Lookup(pe.Underlay); ok && r.Link != t.Overlay.VXLAN.Device {
				why = append(why, fmt.Sprintf("%s is bound to %s but the route to peer %s leaves by %s (%s)", t.Overlay.Name, t.Overlay.VXLAN.Device, pe.Underlay, r.Link, FormatRoute(r)))
			}
		}
	}
	why = append(why, splitReturnPaths(t, uplinks)...)
	// Interfaces where strict mode would bite: uplinks and the overlay.
	ifaces := append([]*facts.Link(nil), uplinks...)
	if t.Overlay != nil {
		ifaces = append(ifaces, t.Overlay)
	}
	var strict []string
	for _, l := range ifaces {
		k, v, ok := in.ifaceSysctl("ipv4", l.Name, "rp_filter")
		iv, _ := strconv.Atoi(v)
		eff := max(all, iv)
		if eff == 1 {
			if ok {
				strict = append(strict, fmt.Sprintf("%s: effective rp_filter = 1 (max of %s = %d, %s = %s)", l.Name, allKey, all, k, v))
			} else {
				strict = append(strict, fmt.Sprintf("%s: effective rp_filter = 1 (%s = %d)", l.Name, allKey, all))
			}
		}
	}
	if len(strict) == 0 {
		return Pass("no strict rp_filter on the uplinks or the overlay")
	}
	if len(why) == 0 {
		return Pass("strict rp_filter, but routing looks symmetric (one uplink, no policy routing)")
	}
	ev := append([]string{}, strict...)
	ev = append(ev, why...)
	return Result{Findings: []finding.Finding{{
		Subject:  "rp_filter",
		Message:  "strict reverse-path filtering (rp_filter=1) is on where traffic can be asymmetric: a packet whose reply route leaves by another interface is dropped silently, without a counter most people look at",
		Evidence: ev,
		Remediation: "use loose mode: sysctl -w net.ipv4.conf.all.rp_filter=2 and net.ipv4.conf.<iface>.rp_filter=2 for the interfaces above (the effective value is the maximum of all and the interface), persist in /etc/sysctl.d/; " +
			"verify: `nstat -az TcpExtIPReversePathFilter` stops rising and cross-node pod traffic flows both ways",
	}}}
}

// splitReturnPaths finds the routes that make traffic asymmetric on a node with one
// addressed uplink: a route out of another (unaddressed) host interface to a destination
// that also lies on an uplink's network or behind a route out of that uplink. Packets from
// that destination arrive on the uplink, the route back leaves by the other interface, and
// strict reverse-path filtering on the uplink drops them.
func splitReturnPaths(t *Topology, uplinks []*facts.Link) []string {
	var out []string
	for _, r := range t.Main {
		if r.Family == 6 || r.Dst == "default" || r.Link == "" || (r.Type != "" && r.Type != "unicast") {
			continue
		}
		l := t.Links[r.Link]
		if l == nil || !l.Up || l.Name == "lo" || l.Name == "docker0" || t.IsCNILink(l.Name) {
			continue
		}
		dst, err := ParsePrefixOrAddr(r.Dst)
		if err != nil || !dst.Addr().Is4() {
			continue
		}
		for _, u := range uplinks {
			if u.Name == r.Link {
				continue
			}
			if via, ok := coveringRoute(t, dst, u.Name); ok {
				out = append(out, fmt.Sprintf("route %q leaves by %s, but %s is also reached by %s (%s): its packets arrive on %s, their reverse path is %s",
					FormatRoute(r), r.Link, r.Dst, u.Name, via, u.Name, r.Link))
				break
			}
		}
	}
	return out
}

// coveringRoute returns a main-table IPv4 route out of link whose destination contains dst
// and is shorter than it (the network dst is part of on that link; the longest such),
// formatted.
func coveringRoute(t *Topology, dst netip.Prefix, link string) (string, bool) {
	best, bits := "", -1
	for _, r := range t.Main {
		if r.Family == 6 || r.Link != link || (r.Type != "" && r.Type != "unicast") {
			continue
		}
		p := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if r.Dst != "default" {
			var err error
			if p, err = ParsePrefixOrAddr(r.Dst); err != nil || !p.Addr().Is4() {
				continue
			}
		}
		if p.Bits() < dst.Bits() && p.Contains(dst.Addr()) && p.Bits() > bits {
			best, bits = FormatRoute(r), p.Bits()
		}
	}
	return best, bits >= 0
}

func orStr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// looksLikeNode reports whether the snapshot shows a Kubernetes pod network:
// a pod bridge, an overlay, a known pod CIDR or kube-proxy's rules.
func (in *Input) looksLikeNode() bool {
	t := in.Topology()
	if t.PodBridge != nil || t.Overlay != nil || len(t.NodePodCIDRs) > 0 || len(t.ClusterCIDRs) > 0 || len(t.Peers) > 0 {
		return true
	}
	kp := in.kubeProxy()
	return kp.proc != nil || kp.rulesSeen
}

// ipv6PodEvidence says why the node has IPv6 pods (a global IPv6 address on
// the pod bridge, flannel's IPv6 subnet), or "".
func (in *Input) ipv6PodEvidence() string {
	t := in.Topology()
	if f := in.Node.Flannel; f != nil && f.IPv6Subnet != "" {
		return FlannelSubnetEnv + " FLANNEL_IPV6_SUBNET=" + f.IPv6Subnet
	}
	if t.PodBridge == nil {
		return ""
	}
	for _, a := range t.Addrs {
		if a.Link == t.PodBridge.Name && a.Prefix.Addr().Is6() && a.Prefix.Addr().IsGlobalUnicast() {
			return fmt.Sprintf("pod bridge %s has IPv6 address %s", a.Link, a.Prefix)
		}
	}
	return ""
}
