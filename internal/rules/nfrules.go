package rules

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/netdoctor/netdoctor/internal/finding"
	"github.com/netdoctor/netdoctor/internal/netfilter"
)

func init() {
	Register(Rule{
		ID:       "forward-policy-drop",
		Severity: finding.Critical,
		Title:    "forwarded pod traffic is accepted before a FORWARD policy DROP",
		Needs:    []string{"addresses", "routes"},
		Docs:     "https://kubernetes.io/docs/reference/networking/ports-and-protocols/ (Docker sets FORWARD DROP; CNIs must accept pod traffic)",
		Run:      runForwardPolicyDrop,
	})
	Register(Rule{
		ID:       "overlay-port-blocked",
		Severity: finding.Critical,
		Title:    "the overlay's UDP port passes the node's firewall both ways",
		Needs:    []string{"links", "addresses"},
		Docs:     "https://github.com/flannel-io/flannel/blob/master/Documentation/backends.md#vxlan (UDP 8472 must be open between nodes)",
		Run:      runOverlayPortBlocked,
	})
}

// traceCase is one packet traced for a rule.
type traceCase struct {
	what string
	pkt  netfilter.Packet
	flow netfilter.Flow
}

// traceResult sums up the outcomes of one traced packet.
type traceResult struct {
	c        traceCase
	outcomes []netfilter.Outcome
	dropP    float64            // probability of drop or reject
	drop     *netfilter.Outcome // the first drop/reject outcome
	unknown  *netfilter.Outcome // the first unknown outcome
	err      error
}

func runTrace(v *nfView, c traceCase) traceResult {
	r := traceResult{c: c}
	r.outcomes, r.err = netfilter.Trace(v.Rulesets, c.pkt, c.flow, v.Env)
	for i := range r.outcomes {
		o := &r.outcomes[i]
		switch o.Verdict {
		case netfilter.VerdictDrop, netfilter.VerdictReject:
			r.dropP += o.Probability
			if r.drop == nil {
				r.drop = o
			}
		case netfilter.VerdictUnknown:
			if r.unknown == nil {
				r.unknown = o
			}
		}
	}
	return r
}

// hostIn returns the n-th host address of a prefix (1 = first after the network address).
func hostIn(p netip.Prefix, n int) netip.Addr {
	a := p.Masked().Addr()
	for i := 0; i < n; i++ {
		a = a.Next()
	}
	return a
}

func runForwardPolicyDrop(in *Input) Result {
	t := in.Topology()
	if len(t.NodePodCIDRs) == 0 {
		return Skip("this node's pod CIDR is unknown (no pod bridge address, no flannel subnet.env): pass --pod-cidr")
	}
	v := in.netfilterView()
	if why, ok := v.Traceable(); !ok {
		return Errorf("cannot trace through the packet filter: %s", why)
	}
	if len(v.Rulesets) == 0 {
		if len(v.Missing) > 0 {
			return Skip("no netfilter dump could be read: %s", strings.Join(v.Missing, "; "))
		}
		return Pass("no packet filter rules on this node")
	}
	own := t.NodePodCIDRs[0].Prefix
	podIP := hostIn(own, 2)
	bridge := "cni0"
	physIn := ""
	if t.PodBridge != nil {
		bridge = t.PodBridge.Name
		if len(t.PodVeths) > 0 {
			physIn = t.PodVeths[0].Name
		}
	}
	var cases []traceCase
	// One peer is enough: the verdict does not depend on which.
	if len(t.Peers) > 0 {
		pe := t.Peers[0]
		out := ""
		if r, ok := t.Lookup(hostIn(pe.PodCIDR, 2)); ok {
			out = r.Link
		} else if t.Overlay != nil {
			out = t.Overlay.Name
		}
		remote := hostIn(pe.PodCIDR, 2)
		cases = append(cases,
			traceCase{fmt.Sprintf("pod %s on %s -> pod %s on another node (out %s)", podIP, bridge, remote, out),
				netfilter.Packet{Src: podIP, Dst: remote, Proto: "tcp", SrcPort: 40000, DstPort: 8080, InIface: bridge, PhysInIface: physIn, OutIface: out}, netfilter.FlowForward},
			traceCase{fmt.Sprintf("pod %s on another node (in %s) -> pod %s on %s", remote, out, podIP, bridge),
				netfilter.Packet{Src: remote, Dst: podIP, Proto: "tcp", SrcPort: 40000, DstPort: 8080, InIface: out, OutIface: bridge}, netfilter.FlowForward})
	}
	// Pod to the outside world, through the default route.
	ext := netip.MustParseAddr("203.0.113.10") // TEST-NET-3: only modelled, never sent
	if r, ok := t.Lookup(ext); ok && r.Link != "" {
		cases = append(cases, traceCase{fmt.Sprintf("pod %s -> external %s (out %s)", podIP, ext, r.Link),
			netfilter.Packet{Src: podIP, Dst: ext, Proto: "tcp", SrcPort: 40000, DstPort: 443, InIface: bridge, PhysInIface: physIn, OutIface: r.Link}, netfilter.FlowForward})
	}
	if len(cases) == 0 {
		return Skip("no other node's pod CIDR and no default route known: nothing to forward")
	}
	var fs []finding.Finding
	var unknown []string
	for _, c := range cases {
		r := runTrace(v, c)
		if r.err != nil {
			return Errorf("trace %s: %v", c.what, r.err)
		}
		if r.drop != nil {
			last := r.drop.LastHit()
			if last.Position != 0 || (!strings.EqualFold(last.Chain, "FORWARD") && last.Hook != "forward") {
				continue // an explicit rule, not the policy: another fault
			}
			ev := []string{fmt.Sprintf("traced %s: %s, %s", c.what, r.drop.Verdict, r.drop.Reason)}
			if r.dropP < 1 {
				ev[0] += fmt.Sprintf(" (probability %.2f)", r.dropP)
			}
			ev = append(ev, FormatHits(r.drop.Hits)...)
			fs = append(fs, finding.Finding{
				Subject:  fmt.Sprintf("%s/%s", last.Table, last.Chain),
				Message:  fmt.Sprintf("the %s chain's policy is DROP and nothing accepts pod traffic before it: %s is dropped", last.Chain, c.what),
				Evidence: ev,
				Remediation: fmt.Sprintf("accept pod traffic in FORWARD: `iptables -I FORWARD -s %s -j ACCEPT && iptables -I FORWARD -d %s -j ACCEPT` (flannel does this itself when started with its forward rules; Docker's `iptables -P FORWARD DROP` is the usual cause), or `iptables -P FORWARD ACCEPT`; "+
					"verify: `netdoctor node check` no longer traces a drop and pods reach pods on other nodes", podNetFor(t, own), podNetFor(t, own)),
			})
			break
		}
		if r.unknown != nil {
			unknown = append(unknown, fmt.Sprintf("%s: %s (%s)", c.what, r.unknown.Reason, r.unknown.LastHit().Text))
		}
	}
	if len(fs) > 0 {
		return Result{Findings: fs}
	}
	if len(unknown) > 0 {
		return Errorf("the tracer could not decide: %s", strings.Join(unknown, "; "))
	}
	return Pass("%d forwarded pod packets traced: accepted%s", len(cases), v.notSeen())
}

// podNetFor is the cluster CIDR when known, else the node's pod CIDR.
func podNetFor(t *Topology, own netip.Prefix) string {
	if len(t.ClusterCIDRs) > 0 {
		return t.ClusterCIDRs[0].Prefix.String()
	}
	return own.String()
}

// overlayPorts returns the overlay's UDP port(s) and a label.
func overlayPorts(t *Topology) ([]uint16, string) {
	o := t.Overlay
	switch o.Type {
	case "vxlan":
		p := 8472 // the kernel's default when no dstport is given
		if o.VXLAN != nil && o.VXLAN.Port != 0 {
			p = o.VXLAN.Port
		}
		return []uint16{uint16(p)}, "VXLAN"
	case "geneve":
		return []uint16{6081}, "Geneve"
	case "wireguard":
		switch {
		case strings.HasPrefix(o.Name, "cilium"):
			return []uint16{51871}, "WireGuard (Cilium)"
		case strings.Contains(o.Name, "v6"):
			return []uint16{51821}, "WireGuard (IPv6)"
		}
		return []uint16{51820}, "WireGuard"
	}
	return nil, ""
}

func runOverlayPortBlocked(in *Input) Result {
	t := in.Topology()
	if t.Overlay == nil {
		return Skip("no overlay device (vxlan, geneve, wireguard) on this node")
	}
	ports, kind := overlayPorts(t)
	if len(ports) == 0 {
		return Skip("overlay %s is %s (IP protocol %s, no UDP port): not traced", t.Overlay.Name, t.Overlay.Type, "4")
	}
	v := in.netfilterView()
	if why, ok := v.Traceable(); !ok {
		return Errorf("cannot trace through the packet filter: %s", why)
	}
	if len(v.Rulesets) == 0 {
		if len(v.Missing) > 0 {
			return Skip("no netfilter dump could be read: %s", strings.Join(v.Missing, "; "))
		}
		return Pass("no packet filter rules on this node")
	}
	// The tunnel's source: the pinned local address, else the uplink's primary.
	var local netip.Addr
	if t.Overlay.VXLAN != nil && t.Overlay.VXLAN.Local != "" {
		local, _ = netip.ParseAddr(t.Overlay.VXLAN.Local)
	}
	uplink := ""
	if t.Uplink != nil {
		uplink = t.Uplink.Name
		if !local.IsValid() {
			if as := t.GlobalV4(uplink); len(as) > 0 {
				local = as[0].Prefix.Addr()
			}
		}
	}
	if !local.IsValid() {
		return Skip("the tunnel source address of %s is unknown (no local address, no uplink address)", t.Overlay.Name)
	}
	// Peers' underlay addresses: FDB destinations, hints.
	var peers []netip.Addr
	seen := map[netip.Addr]bool{}
	for _, pe := range t.Peers {
		if pe.Underlay.IsValid() && !seen[pe.Underlay] {
			seen[pe.Underlay] = true
			peers = append(peers, pe.Underlay)
		}
	}
	for _, f := range in.Node.FDB {
		if f.Link != t.Overlay.Name || f.Dst == "" {
			continue
		}
		if a, err := netip.ParseAddr(f.Dst); err == nil && !seen[a] {
			seen[a] = true
			peers = append(peers, a)
		}
	}
	for _, a := range in.Hints.PeerIPs {
		if !seen[a] {
			seen[a] = true
			peers = append(peers, a)
		}
	}
	note := ""
	if len(peers) == 0 {
		// No peer known: a neighbour of the same underlay network stands in.
		for _, a := range t.Addrs {
			if a.Prefix.Addr() == local && a.Prefix.Bits() < 31 {
				cand := hostIn(a.Prefix, 1)
				if cand == local {
					cand = hostIn(a.Prefix, 2)
				}
				peers = append(peers, cand)
				note = fmt.Sprintf(" (no peer known from the FDB; %s of the underlay network %s stands in)", cand, a.Prefix.Masked())
			}
		}
	}
	if len(peers) == 0 {
		return Skip("no peer underlay address known (no FDB destinations on %s)", t.Overlay.Name)
	}
	if len(peers) > 8 {
		peers = peers[:8]
	}
	var fs []finding.Finding
	var unknown []string
	traced := 0
	for _, port := range ports {
		for _, peer := range peers {
			cases := []traceCase{
				{fmt.Sprintf("inbound %s udp %s:%d -> %s:%d (in %s)", kind, peer, 40000, local, port, uplink),
					netfilter.Packet{Src: peer, Dst: local, Proto: "udp", SrcPort: 40000, DstPort: port, InIface: uplink}, netfilter.FlowInput},
				{fmt.Sprintf("outbound %s udp %s:%d -> %s:%d (out %s)", kind, local, 40000, peer, port, uplink),
					netfilter.Packet{Src: local, Dst: peer, Proto: "udp", SrcPort: 40000, DstPort: port, OutIface: uplink}, netfilter.FlowOutput},
			}
			for _, c := range cases {
				traced++
				r := runTrace(v, c)
				if r.err != nil {
					return Errorf("trace %s: %v", c.what, r.err)
				}
				if r.drop != nil {
					last := r.drop.LastHit()
					ev := []string{fmt.Sprintf("traced %s%s: %s", c.what, note, r.drop.Verdict)}
					if r.dropP < 1 {
						ev[0] += fmt.Sprintf(" with probability %.2f", r.dropP)
					}
					if r.drop.Reason != "" {
						ev[0] += " (" + r.drop.Reason + ")"
					}
					ev = append(ev, FormatHits(r.drop.Hits)...)
					ev = append(ev, "overlay: "+FormatLink(t.Overlay))
					var fix string
					if last.Position > 0 {
						ipt := "iptables"
						if last.Source == "iptables-legacy" {
							ipt = "iptables-legacy"
						}
						fix = fmt.Sprintf("delete the rule: `%s -t %s -D %s %d`, or insert an accept before it: `%s -I %s -p udp --dport %d -s <node network> -j ACCEPT`", ipt, last.Table, last.Chain, last.Position, ipt, last.Chain, port)
						if strings.EqualFold(last.Backend, netfilter.BackendNftables) {
							fix = fmt.Sprintf("delete the rule from nftables chain %s %s (nft -a list chain ... then nft delete rule ... handle N), or accept udp dport %d from the node network before it", last.Table, last.Chain, port)
						}
					} else {
						fix = fmt.Sprintf("the %s chain's policy drops it: accept the overlay first, e.g. `iptables -I %s -p udp --dport %d -s <node network> -j ACCEPT`", last.Chain, last.Chain, port)
					}
					fs = append(fs, finding.Finding{
						Subject:     fmt.Sprintf("%s udp/%d", t.Overlay.Name, port),
						Message:     fmt.Sprintf("the firewall %ss %s tunnel packets (%s): cross-node pod traffic with %s is lost while same-node traffic works", r.drop.Verdict, kind, c.what, peer),
						Evidence:    ev,
						Remediation: fix + fmt.Sprintf("; also check the network's firewalls (security groups) for udp/%d; verify: pods ping pods on other nodes, and `tcpdump -ni %s udp port %d` on the peer sees the packets", port, uplink, port),
					})
					continue
				}
				if r.unknown != nil {
					unknown = append(unknown, fmt.Sprintf("%s: %s at %s", c.what, r.unknown.Reason, r.unknown.LastHit().Text))
				}
			}
			if len(fs) > 0 {
				break // one peer shows it; the rest would repeat
			}
		}
	}
	if len(fs) > 0 {
		return Result{Findings: fs}
	}
	if len(unknown) > 0 {
		return Errorf("the tracer could not decide for the overlay port: %s", strings.Join(unknown, "; "))
	}
	return Pass("%d overlay packets traced (%s udp/%v to/from %d peer(s)): accepted%s%s", traced, kind, ports, len(peers), note, v.notSeen())
}
