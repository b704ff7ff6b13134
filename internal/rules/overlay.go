package rules

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/netdoctor/netdoctor/internal/facts"
	"github.com/netdoctor/netdoctor/internal/finding"
)

func init() {
	Register(Rule{
		ID:       "overlay-fdb-missing",
		Severity: finding.Critical,
		Title:    "every overlay route has its peer's neighbour and FDB entry, pointing at a peer node",
		Needs:    []string{"links", "routes", "neighbors", "fdb"},
		Docs:     "https://github.com/flannel-io/flannel/blob/master/Documentation/backends.md#vxlan",
		Run:      runOverlayFDB,
	})
	Register(Rule{
		ID:       "overlay-source-mismatch",
		Severity: finding.Critical,
		Title:    "the tunnel source address is the one the peers know",
		Needs:    []string{"links", "addresses", "routes"},
		Docs:     "https://github.com/flannel-io/flannel/blob/master/Documentation/configuration.md (--iface, --public-ip)",
		Run:      runOverlaySource,
	})
	Register(Rule{
		ID:       "mtu-mismatch",
		Severity: finding.Critical,
		Title:    "MTUs fit hop by hop: pod veth <= bridge <= overlay <= uplink - encapsulation",
		Needs:    []string{"links"},
		Docs:     "https://github.com/flannel-io/flannel/blob/master/Documentation/troubleshooting.md",
		Run:      runMTU,
	})
}

func runOverlayFDB(in *Input) Result {
	t := in.Topology()
	o := t.Overlay
	if o == nil || o.Type != "vxlan" {
		return Skip("no VXLAN overlay device on this node")
	}
	var routes []facts.Route
	for _, r := range t.Main {
		if r.Link == o.Name && r.Gateway != "" {
			routes = append(routes, r)
		}
	}
	if len(routes) == 0 {
		return Skip("no route via %s with a gateway (no peer to check)", o.Name)
	}
	// Addresses that are known peers' underlay endpoints.
	known := map[netip.Addr]string{}
	for _, a := range in.Hints.PeerIPs {
		known[a] = "hint"
	}
	var fs []finding.Finding
	for _, r := range routes {
		gw, err := netip.ParseAddr(r.Gateway)
		if err != nil {
			continue
		}
		var neigh *facts.Neighbor
		for i := range in.Node.Neighbors {
			n := &in.Node.Neighbors[i]
			if n.Link == o.Name && n.IP == gw.String() {
				neigh = n
			}
		}
		rl := "route: " + FormatRoute(r)
		if neigh == nil || neigh.MAC == "" || neigh.State == "failed" || neigh.State == "incomplete" {
			ev := []string{rl}
			if neigh == nil {
				ev = append(ev, fmt.Sprintf("neighbour %s on %s: none (ip neigh show dev %s)", gw, o.Name, o.Name))
			} else {
				ev = append(ev, "neighbour: "+FormatNeighbor(*neigh))
			}
			fs = append(fs, finding.Finding{
				Subject:     fmt.Sprintf("%s %s", o.Name, gw),
				Message:     fmt.Sprintf("the route to %s goes via %s on %s but there is no usable neighbour entry for %s: the kernel cannot build the inner Ethernet header, so traffic to that node's pods is dropped", r.Dst, gw, o.Name, gw),
				Evidence:    ev,
				Remediation: fmt.Sprintf("restart the CNI agent on this node (flannel rewrites its neighbour and FDB entries on start), or add it: `ip neigh replace %s lladdr <peer %s MAC> dev %s nud permanent`; verify: `ip neigh show dev %s` lists %s PERMANENT", gw, o.Name, o.Name, o.Name, gw),
			})
			continue
		}
		if neigh.State != "permanent" && neigh.State != "noarp" {
			fs = append(fs, finding.Finding{
				Severity:    finding.Warning,
				Subject:     fmt.Sprintf("%s %s", o.Name, gw),
				Message:     fmt.Sprintf("the neighbour entry for %s on %s is %s, not permanent: when it ages out nothing answers ARP on the overlay and traffic to %s stops until the CNI agent rewrites it", gw, o.Name, neigh.State, r.Dst),
				Evidence:    []string{rl, "neighbour: " + FormatNeighbor(*neigh)},
				Remediation: fmt.Sprintf("make it permanent: `ip neigh replace %s lladdr %s dev %s nud permanent` (flannel writes permanent entries; restart it if it did not); verify: `ip neigh show dev %s` lists %s PERMANENT", gw, neigh.MAC, o.Name, o.Name, gw),
			})
		}
		var fdb []facts.FDBEntry
		for _, f := range in.Node.FDB {
			if f.Link == o.Name && strings.EqualFold(f.MAC, neigh.MAC) {
				fdb = append(fdb, f)
			}
		}
		if len(fdb) == 0 {
			fs = append(fs, finding.Finding{
				Subject: fmt.Sprintf("%s %s", o.Name, neigh.MAC),
				Message: fmt.Sprintf("the neighbour %s on %s has MAC %s but the VXLAN FDB has no entry for that MAC: the kernel does not know which node to send the tunnel packets for %s to", gw, o.Name, neigh.MAC, r.Dst),
				Evidence: []string{rl, "neighbour: " + FormatNeighbor(*neigh),
					fmt.Sprintf("fdb on %s for %s: none (bridge fdb show dev %s)", o.Name, neigh.MAC, o.Name)},
				Remediation: fmt.Sprintf("restart the CNI agent on this node, or add it: `bridge fdb append %s dev %s dst <peer node IP> self permanent`; verify: `bridge fdb show dev %s` lists %s with the peer's node IP", neigh.MAC, o.Name, o.Name, neigh.MAC),
			})
			continue
		}
		for _, f := range fdb {
			dst, err := netip.ParseAddr(f.Dst)
			var bad string
			switch {
			case f.Dst == "":
				bad = "has no dst: the tunnel has no endpoint"
			case err != nil:
				bad = "has an unparsable dst"
			default:
				if a, local := t.LocalAddr(dst); local {
					bad = fmt.Sprintf("points at %s, an address of this node (%s)", dst, a.Link)
				} else if pn := t.inPodNetwork(dst); pn != "" {
					bad = fmt.Sprintf("points at %s, inside the pod network %s, not at a node", dst, pn)
				} else if len(known) > 0 && known[dst] == "" {
					bad = fmt.Sprintf("points at %s, which is not a known node address", dst)
				} else if rr, ok := t.Lookup(dst); !ok || rr.Link == o.Name || rr.Type == "blackhole" || rr.Type == "unreachable" || rr.Type == "prohibit" {
					if ok {
						bad = fmt.Sprintf("points at %s, reached by %q, not through the underlay", dst, FormatRoute(rr))
					} else {
						bad = fmt.Sprintf("points at %s, for which the node has no route", dst)
					}
				}
			}
			if bad == "" {
				continue
			}
			fs = append(fs, finding.Finding{
				Subject:     fmt.Sprintf("%s %s", o.Name, f.MAC),
				Message:     fmt.Sprintf("the VXLAN FDB entry for the peer behind %s %s: tunnel packets for %s go to the wrong place", gw, bad, r.Dst),
				Evidence:    []string{rl, "neighbour: " + FormatNeighbor(*neigh), "fdb: " + FormatFDB(f)},
				Remediation: fmt.Sprintf("point it at the peer node's IP: `bridge fdb replace %s dev %s dst <peer node IP> self permanent` (or restart the CNI agent); verify: pods ping that node's pods", f.MAC, o.Name),
			})
		}
	}
	if len(fs) == 0 {
		return Pass("%d overlay route(s) with neighbour and FDB entries", len(routes))
	}
	return Result{Findings: fs}
}

// inPodNetwork returns the pod network holding a, or "".
func (t *Topology) inPodNetwork(a netip.Addr) string {
	for _, n := range t.PodNetworks() {
		if n.Prefix.Contains(a) {
			return n.Prefix.String()
		}
	}
	return ""
}

func runOverlaySource(in *Input) Result {
	t := in.Topology()
	o := t.Overlay
	if o == nil || o.VXLAN == nil {
		return Skip("no VXLAN overlay device on this node")
	}
	if o.VXLAN.VNI == 0 && o.VXLAN.Local == "" {
		return Skip("%s is an external (collect-metadata) VXLAN device: its CNI sets the tunnel source per packet", o.Name)
	}
	if t.Uplink == nil {
		return Skip("the uplink of %s is unknown (no underlying device, no route to a peer, no default route)", o.Name)
	}
	up := t.Uplink.Name
	addrs := t.GlobalV4(up)
	var as []string
	for _, a := range addrs {
		s := a.Prefix.String()
		if a.Secondary {
			s += " (secondary)"
		}
		as = append(as, s)
	}
	upEv := fmt.Sprintf("addresses on %s: %s", up, strings.Join(as, ", "))
	linkEv := "overlay: " + FormatLink(o)
	fix := fmt.Sprintf("pin the tunnel to the address the other nodes know: start flannel with --iface=%s or --public-ip=<node IP> (or recreate %s with `local <node IP>`), and remove the stray address if it is not needed (`ip addr del <addr> dev %s`); verify: `ip -d link show %s` shows local <node IP> and the peers' FDB entries (bridge fdb show dev %s on them) point at it", up, o.Name, up, o.Name, o.Name)
	// Where the peers' routes would take the traffic from.
	var routeSrc []string
	for _, pe := range t.Peers {
		if !pe.Underlay.IsValid() {
			continue
		}
		if r, ok := t.Lookup(pe.Underlay); ok {
			routeSrc = append(routeSrc, fmt.Sprintf("route to peer %s: %s", pe.Underlay, FormatRoute(r)))
		}
	}
	finds := func(sev finding.Severity, msg string, ev ...string) Result {
		ev = append(ev, linkEv, upEv)
		ev = append(ev, routeSrc...)
		return Result{Findings: []finding.Finding{{Severity: sev, Subject: o.Name, Message: msg, Evidence: ev, Remediation: fix}}}
	}
	local := o.VXLAN.Local
	if local != "" {
		la, err := netip.ParseAddr(local)
		if err != nil {
			return Errorf("%s has an unparsable local address %q", o.Name, local)
		}
		if _, ok := t.LocalAddr(la); !ok {
			return finds(finding.Critical, fmt.Sprintf("%s sends tunnel packets from %s, which is no longer an address of this node (changed by DHCP?): peers' replies and their tunnel packets go nowhere", o.Name, local))
		}
		for _, n := range t.NodeIPs {
			if n.Prefix.Addr() != la {
				return finds(finding.Critical, fmt.Sprintf("%s sends tunnel packets from %s but the other nodes know this node as %s: they drop or misroute its packets and send theirs to the other address (can send, cannot receive)", o.Name, local, n.Prefix.Addr()),
					"node address known to peers: "+n.Source)
			}
		}
		if len(t.NodeIPs) == 0 && len(addrs) > 1 && addrs[0].Prefix.Addr() != la {
			for _, a := range addrs[1:] {
				if a.Prefix.Addr() == la {
					return finds(finding.Warning, fmt.Sprintf("%s sends tunnel packets from %s, a secondary address of %s, while the primary %s is what flannel and the kubelet advertise by default: if the peers know this node as %s, its tunnel packets are dropped (can send, cannot receive)", o.Name, local, up, addrs[0].Prefix.Addr(), addrs[0].Prefix.Addr()))
				}
			}
		}
		return Pass("%s local %s is an address of %s", o.Name, local, up)
	}
	// No pinned local: the kernel picks the source per packet from the route.
	if len(addrs) > 1 {
		return finds(finding.Warning, fmt.Sprintf("%s has no local address and %s has %d global addresses: the tunnel source is whatever the route picks, and when it is not the address the peers know, requests arrive but replies never come back", o.Name, up, len(addrs)))
	}
	for _, n := range t.NodeIPs {
		for _, pe := range t.Peers {
			if !pe.Underlay.IsValid() {
				continue
			}
			if r, ok := t.Lookup(pe.Underlay); ok && r.Src != "" && r.Src != n.Prefix.Addr().String() {
				return finds(finding.Critical, fmt.Sprintf("%s has no local address and the route to peer %s uses source %s, but the peers know this node as %s", o.Name, pe.Underlay, r.Src, n.Prefix.Addr()), "node address known to peers: "+n.Source)
			}
		}
	}
	return Pass("%s has no pinned local address but %s has a single global address", o.Name, up)
}

// encapOverhead is the bytes the overlay adds, and a label.
func encapOverhead(o *facts.Link, underlayV6 bool) (int, string) {
	switch o.Type {
	case "vxlan":
		if underlayV6 {
			return 70, "VXLAN over IPv6"
		}
		return 50, "VXLAN"
	case "geneve":
		if underlayV6 {
			return 70, "Geneve over IPv6 (without options)"
		}
		return 50, "Geneve (without options)"
	case "ipip":
		return 20, "IPIP"
	case "wireguard":
		if underlayV6 {
			return 80, "WireGuard over IPv6"
		}
		return 60, "WireGuard"
	}
	return 0, ""
}

func runMTU(in *Input) Result {
	t := in.Topology()
	o := t.Overlay
	if o == nil && t.PodBridge == nil {
		return Skip("no overlay device and no pod bridge on this node")
	}
	var hops []string
	var problems []string
	sev := finding.Warning
	// Pod veths and bridge.
	for _, v := range t.PodVeths {
		hops = append(hops, fmt.Sprintf("pod veth %s mtu %d", v.Name, v.MTU))
	}
	if t.PodBridge != nil {
		hops = append(hops, fmt.Sprintf("bridge %s mtu %d", t.PodBridge.Name, t.PodBridge.MTU))
	}
	limit, limitName := 0, ""
	if o != nil {
		limit, limitName = o.MTU, o.Name
		hops = append(hops, fmt.Sprintf("overlay %s", FormatLink(o)))
	}
	if fl := in.Node.Flannel; fl != nil && fl.MTU > 0 {
		hops = append(hops, fmt.Sprintf("%s FLANNEL_MTU=%d", FlannelSubnetEnv, fl.MTU))
		if limit == 0 || fl.MTU < limit {
			limit, limitName = fl.MTU, "FLANNEL_MTU"
		}
	}
	if limit > 0 {
		for _, v := range t.PodVeths {
			if v.MTU > limit {
				problems = append(problems, fmt.Sprintf("pod veth %s mtu %d > %s mtu %d", v.Name, v.MTU, limitName, limit))
			}
		}
		if t.PodBridge != nil && t.PodBridge.MTU > limit {
			problems = append(problems, fmt.Sprintf("bridge %s mtu %d > %s mtu %d", t.PodBridge.Name, t.PodBridge.MTU, limitName, limit))
		}
	}
	if o != nil && t.Uplink != nil {
		v6 := false
		if o.VXLAN != nil && strings.Contains(o.VXLAN.Local, ":") {
			v6 = true
		}
		oh, label := encapOverhead(o, v6)
		hops = append(hops, fmt.Sprintf("uplink %s mtu %d (%s overhead %d: overlay may be at most %d)", t.Uplink.Name, t.Uplink.MTU, label, oh, t.Uplink.MTU-oh))
		if oh > 0 && o.MTU > t.Uplink.MTU-oh {
			problems = append(problems, fmt.Sprintf("overlay %s mtu %d > uplink %s mtu %d - %d (%s) = %d", o.Name, o.MTU, t.Uplink.Name, t.Uplink.MTU, oh, label, t.Uplink.MTU-oh))
			sev = finding.Critical
		}
	}
	if o == nil && t.Uplink != nil {
		// No overlay (host-gw, routed): pods send straight through the uplink.
		hops = append(hops, fmt.Sprintf("uplink %s mtu %d", t.Uplink.Name, t.Uplink.MTU))
		for _, v := range t.PodVeths {
			if v.MTU > t.Uplink.MTU {
				problems = append(problems, fmt.Sprintf("pod veth %s mtu %d > uplink %s mtu %d", v.Name, v.MTU, t.Uplink.Name, t.Uplink.MTU))
			}
		}
		if t.PodBridge != nil && t.PodBridge.MTU > t.Uplink.MTU {
			problems = append(problems, fmt.Sprintf("bridge %s mtu %d > uplink %s mtu %d", t.PodBridge.Name, t.PodBridge.MTU, t.Uplink.Name, t.Uplink.MTU))
		}
		if limitName == "" {
			limitName = t.Uplink.Name
		}
	}
	if len(problems) == 0 {
		return Pass("MTUs fit: %s", strings.Join(hops, " -> "))
	}
	ev := append([]string{"hops: " + strings.Join(hops, " -> ")}, problems...)
	msg := "MTUs disagree along the pod path: " + strings.Join(problems, "; ") + ". Small packets pass, full-size ones (the first data segment after the TCP handshake, `ping -s 1400`) are dropped"
	fix := "make every hop fit: uplink MTU >= overlay MTU + overhead >= pod MTU + overhead; e.g. `ip link set dev <uplink> mtu 1500`, or lower the overlay/pod MTU in the CNI config (flannel: the MTU follows the uplink at start; restart it and recreate pods); verify: `ping -M do -s <overlay MTU - 28>` from a pod to a pod on another node succeeds"
	return Result{Findings: []finding.Finding{{Severity: sev, Subject: limitName, Message: msg, Evidence: ev, Remediation: fix}}}
}
