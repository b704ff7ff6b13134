package rules

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/netdoctor/netdoctor/internal/finding"
)

func init() {
	Register(Rule{
		ID:       "pod-cidr-overlap",
		Severity: finding.Critical,
		Title:    "no host address or non-CNI route inside the pod network",
		Needs:    []string{"links", "addresses", "routes"},
		Docs:     "https://kubernetes.io/docs/concepts/cluster-administration/networking/",
		Run:      runPodCIDROverlap,
	})
	Register(Rule{
		ID:       "pod-route-missing",
		Severity: finding.Critical,
		Title:    "a route to every other node's pod CIDR, through the right device and gateway",
		Needs:    []string{"links", "routes"},
		Docs:     "https://github.com/flannel-io/flannel/blob/master/Documentation/troubleshooting.md",
		Run:      runPodRouteMissing,
	})
}

// podBits is the prefix length of the most specific pod CIDR overlapping p:
// the length of the CNI route the overlap competes with.
func (t *Topology) podBits(p netip.Prefix) (int, string) {
	bits, src := -1, ""
	for _, s := range t.NodePodCIDRs {
		if s.Prefix.Overlaps(p) && s.Prefix.Bits() > bits {
			bits, src = s.Prefix.Bits(), s.Prefix.String()+" (this node's pods; "+s.Source+")"
		}
	}
	for _, pe := range t.Peers {
		if pe.PodCIDR.Overlaps(p) && pe.PodCIDR.Bits() > bits {
			bits, src = pe.PodCIDR.Bits(), pe.PodCIDR.String()+" (a peer's pods)"
		}
	}
	for _, s := range t.ClusterCIDRs {
		if bits < 0 && s.Prefix.Overlaps(p) {
			bits, src = s.Prefix.Bits(), s.Prefix.String()+" (cluster CIDR; "+s.Source+")"
		}
	}
	return bits, src
}

func runPodCIDROverlap(in *Input) Result {
	t := in.Topology()
	nets := t.PodNetworks()
	if len(nets) == 0 {
		return Skip("no pod CIDR known: no pod bridge address, no flannel subnet.env, no overlay routes; pass --pod-cidr or --cluster-cidr")
	}
	var fs []finding.Finding
	seen := map[netip.Prefix]bool{}
	overlapsPods := func(p netip.Prefix) (Sourced, bool) {
		for _, n := range nets {
			if n.Prefix.Overlaps(p) {
				return n, true
			}
		}
		return Sourced{}, false
	}
	add := func(p netip.Prefix, what, subject string, extra []string) {
		n, ok := overlapsPods(p)
		if !ok {
			return
		}
		bits, podSrc := t.podBits(p)
		if podSrc == "" {
			podSrc = n.Prefix.String() + " (" + n.Source + ")"
		}
		f := finding.Finding{Subject: subject}
		ev := []string{fmt.Sprintf("%s overlaps pod network %s (%s)", what, n.Prefix, n.Source)}
		switch {
		case p.Bits() > bits:
			f.Severity = finding.Critical
			f.Message = fmt.Sprintf("%s is inside the pod network with a longer prefix than the pod route for %s: the kernel sends those pod addresses to the host network instead (\"No route to host\" between pods)", what, podSrc)
		case p.Bits() == bits:
			f.Severity = finding.Warning
			f.Message = fmt.Sprintf("%s covers exactly the pod range %s: which one wins depends on route order, so the conflict is latent and breaks pod traffic after a reboot or a route change", what, podSrc)
		default:
			f.Severity = finding.Warning
			f.Message = fmt.Sprintf("%s contains the pod network: pod routes win for pod addresses, but hosts of that network whose addresses fall in %s are unreachable from this node and its pods", what, n.Prefix)
		}
		ev = append(ev, fmt.Sprintf("pod route prefix /%d (%s), host prefix /%d", bits, podSrc, p.Bits()))
		ev = append(ev, extra...)
		f.Evidence = ev
		f.Remediation = "move the host network or route out of the pod network (ip addr del / ip route del on this node), or give the cluster a pod CIDR that no host network uses (CNI config and kube-controller-manager --cluster-cidr); " +
			"verify: `ip route get <pod IP>` on this node goes through the CNI device (cni0 or the overlay)"
		fs = append(fs, f)
	}
	for _, a := range t.Addrs {
		if a.Link == "lo" || t.IsCNILink(a.Link) || !a.Prefix.Addr().Is4() {
			continue
		}
		net := a.Prefix.Masked()
		seen[net] = true
		var extra []string
		for _, r := range t.Main {
			if r.Dst == net.String() && r.Link == a.Link {
				extra = append(extra, "route: "+FormatRoute(r))
			}
		}
		add(net, fmt.Sprintf("address %s on %s (not a CNI interface)", a.Prefix, a.Link), a.Link, extra)
	}
	for _, r := range t.Main {
		if r.Dst == "default" || (r.Link != "" && t.IsCNILink(r.Link)) || r.Family == 6 {
			continue
		}
		if r.Link == "" && (r.Protocol == "bird" || r.Protocol == "cilium") {
			continue // CNI blackhole for its own block
		}
		p, err := ParsePrefixOrAddr(r.Dst)
		if err != nil || seen[p] || !p.Addr().Is4() {
			continue
		}
		if r.Protocol == "bird" || r.Protocol == "zebra" || r.Protocol == "bgp" {
			continue // routing daemons of CNIs (Calico's BIRD): they are the pod routes
		}
		if !t.competesWithCNIRoute(p) {
			// The only route for that range: the pod route itself (flannel
			// host-gw, static routing), pod-route-missing judges it.
			continue
		}
		subject := r.Link
		if subject == "" {
			subject = r.Dst
		}
		add(p, fmt.Sprintf("route %q (not via a CNI interface)", FormatRoute(r)), subject, nil)
	}
	if len(fs) == 0 {
		var ns []string
		for _, n := range nets {
			ns = append(ns, n.Prefix.String())
		}
		return Pass("no host address or non-CNI route overlaps %s", strings.Join(ns, ", "))
	}
	return Result{Findings: fs}
}

// competesWithCNIRoute reports whether a route through a CNI device
// overlaps p: only then does a non-CNI route for p conflict with pod routing.
func (t *Topology) competesWithCNIRoute(p netip.Prefix) bool {
	for _, r := range t.Main {
		if r.Link == "" || !t.IsCNILink(r.Link) || r.Dst == "default" {
			continue
		}
		if q, err := ParsePrefixOrAddr(r.Dst); err == nil && q.Overlaps(p) {
			return true
		}
	}
	return false
}

func runPodRouteMissing(in *Input) Result {
	t := in.Topology()
	if len(t.Peers) == 0 {
		return Skip("no other node's pod CIDR known (no routes or neighbours on an overlay device, no --pod-cidr for other nodes)")
	}
	var fs []finding.Finding
	for _, pe := range t.Peers {
		probe := pe.PodCIDR.Addr().Next()
		r, ok := t.Lookup(probe)
		var problem string
		switch {
		case !ok:
			problem = fmt.Sprintf("no route at all to %s", pe.PodCIDR)
		case r.Type == "blackhole" || r.Type == "unreachable" || r.Type == "prohibit":
			problem = fmt.Sprintf("the route to %s is a %s route", pe.PodCIDR, r.Type)
		case r.Dst == "default":
			problem = fmt.Sprintf("no route to %s: its pods' traffic follows the default route out of the node, unencapsulated", pe.PodCIDR)
		case t.Overlay != nil && pe.Gateway.IsValid() && r.Link != t.Overlay.Name:
			problem = fmt.Sprintf("the route to %s leaves by %s instead of the overlay device %s", pe.PodCIDR, r.Link, t.Overlay.Name)
		case t.Overlay != nil && pe.Gateway.IsValid() && r.Gateway != "" && r.Gateway != pe.Gateway.String():
			problem = fmt.Sprintf("the route to %s goes via %s but the peer's overlay address is %s", pe.PodCIDR, r.Gateway, pe.Gateway)
		case t.Overlay != nil && r.Link == t.Overlay.Name && pe.Gateway.IsValid() && r.Gateway == "":
			problem = fmt.Sprintf("the route to %s on %s has no gateway, so the kernel cannot pick the peer's neighbour/FDB entry", pe.PodCIDR, r.Link)
		}
		if problem == "" {
			continue
		}
		ev := []string{}
		if ok {
			ev = append(ev, fmt.Sprintf("route used for %s: %s", probe, FormatRoute(r)))
		} else {
			ev = append(ev, fmt.Sprintf("route used for %s: none", probe))
		}
		for _, s := range pe.Sources {
			if !strings.HasPrefix(s, "route: ") || !ok || s != "route: "+FormatRoute(r) {
				ev = append(ev, "peer learned from "+s)
			}
		}
		fix := fmt.Sprintf("restore the route: `ip route replace %s", pe.PodCIDR)
		switch {
		case t.Overlay != nil && pe.Gateway.IsValid():
			fix += fmt.Sprintf(" via %s dev %s onlink`", pe.Gateway, t.Overlay.Name)
		case t.Overlay != nil:
			fix += fmt.Sprintf(" via <peer overlay address> dev %s onlink`", t.Overlay.Name)
		default:
			fix += " via <peer node IP> dev <uplink>`"
		}
		fix += " (or restart the CNI agent, e.g. the flannel pod on this node, which rewrites it); verify: `ip route get " + probe.String() + "` shows the overlay device and a pod on that node answers ping"
		fs = append(fs, finding.Finding{
			Subject:     pe.PodCIDR.String(),
			Message:     problem + ": pods on this node cannot reach the pods of that node",
			Evidence:    ev,
			Remediation: fix,
		})
	}
	if len(fs) == 0 {
		return Pass("%d peer pod CIDR(s) routed through the overlay", len(t.Peers))
	}
	return Result{Findings: fs}
}
