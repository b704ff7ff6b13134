package faults

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/netdoctor/netdoctor/internal/lab"
	"github.com/netdoctor/netdoctor/internal/lab/flannel"
)

// The host group: the node's own addresses, routes and reverse-path filtering, outside what
// the CNI manages.

// ExtPingNode: ICMP echo from the external host (outside the cluster, on the underlay) to the
// node From's address.
const ExtPingNode ProbeKind = "ext-ping-node"

// conntrack-table-full is not in the registry: nf_conntrack_max is writable only in the
// root network namespace (read-only inside a node's namespace on this kernel), and the lab
// never changes the root namespace's sysctls; filling the shared table would hit the host too.

// overlay-source-mismatch (tunnel.go) needs more than a second address: a second address on
// the node's uplink made the tunnel source (tried: `ip addr add UNDERLAY.212/24 dev eth0; ip link set
// flannel.1 type vxlan local UNDERLAY.212`) breaks nothing on this datapath. Like flanneld's,
// the lab's flannel.1 devices are nolearning with static FDB entries, so a peer decapsulates
// VXLAN from any source and sends its replies to the node's advertised address, which stays
// on the uplink; cross-node pod traffic kept working both ways. Breaking it needs something
// beyond the node (peers that learn or filter VXLAN by source, or an address conflict on the
// underlay): tunnel.go injects it as the seed saw it (the address published as the node's
// flannel public IP, and held by the external host too, which wins ARP).

func init() {
	Register(Fault{
		ID: "pod-cidr-overlap", Group: "host",
		Summary:   "a host address inside the peer's pod CIDR (a /25 on the node's uplink) overrides the overlay route: traffic between the node's pods and the peer's pods goes unanswered (ARP on the uplink, then \"No route to host\")",
		Injection: "ip addr add PEER_POD_CIDR_FIRST_HALF.126/25 dev eth0",
		Checks: []Check{
			{Kind: PodPing, From: Faulted, To: Peer, Broken: true},
			{Kind: PodTCP, From: Faulted, To: Peer, Broken: true},
			{Kind: PodTCP, From: Peer, To: Faulted, Broken: true},
			{Kind: PodTCP, From: Faulted, To: Other},
			{Kind: PodTCP, From: Other, To: Peer},
		},
		Inject: injectCIDROverlap,
		Heal:   healCIDROverlap,
	})
	Register(Fault{
		ID: "rp-filter-strict", Group: "host",
		Summary:   "strict reverse-path filtering on eth0 of a multi-homed node whose route back to the external host leaves by a second uplink: the external host's packets to the node are dropped silently",
		Injection: "ip link add eth1 type veth peer rpf-NODE (into the underlay bridge); ip link set eth1 arp off up; ip route add EXT_IP/32 dev eth1; ip neigh add EXT_IP lladdr EXT_MAC dev eth1; sysctl -w net.ipv4.conf.eth0.rp_filter=1",
		Checks: []Check{
			{Kind: ExtPingNode, From: Faulted, Broken: true},
			{Kind: ExtPingNode, From: Peer},
			{Kind: PodTCP, From: Faulted, To: Peer},
			{Kind: PodTCP, From: Peer, To: Faulted},
		},
		Inject: injectRPFilter,
		Heal:   healRPFilter,
	})
}

// overlapAddr is a host address in the first half of the peer's pod CIDR, as a /25: longer
// than the peer's /24 overlay route, so it wins.
func overlapAddr(p flannel.Peer) (*netlink.Addr, error) {
	c := p.PodCIDR.Masked()
	if c.Bits() > 24 {
		return nil, fmt.Errorf("peer pod CIDR %s is smaller than a /24", c)
	}
	a := c.Addr().As4()
	a[3] = 126
	return &netlink.Addr{IPNet: lab.IPNet(netip.AddrFrom4(a), 25)}, nil
}

func injectCIDROverlap(ctx context.Context, t Target) (map[string]string, error) {
	p, err := peerOf(ctx, t)
	if err != nil {
		return nil, err
	}
	addr, err := overlapAddr(p)
	if err != nil {
		return nil, err
	}
	h, err := nodeHandle(t)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	up, err := h.LinkByName(lab.UplinkName)
	if err != nil {
		return nil, fmt.Errorf("find %s on %s: %w", lab.UplinkName, t.Node, err)
	}
	if err := h.AddrAdd(up, addr); err != nil {
		return nil, fmt.Errorf("add %s to %s of %s: %w", addr.IPNet, lab.UplinkName, t.Node, err)
	}
	return map[string]string{"addr": addr.IPNet.String()}, nil
}

func healCIDROverlap(_ context.Context, t Target, d map[string]string) error {
	ip, ipn, err := net.ParseCIDR(d["addr"])
	if err != nil {
		return fmt.Errorf("recorded overlap address %q: %w", d["addr"], err)
	}
	ipn.IP = ip
	h, err := nodeHandle(t)
	if err != nil {
		return err
	}
	defer h.Close()
	up, err := h.LinkByName(lab.UplinkName)
	if err != nil {
		return fmt.Errorf("find %s on %s: %w", lab.UplinkName, t.Node, err)
	}
	if err := h.AddrDel(up, &netlink.Addr{IPNet: ipn}); err != nil {
		return fmt.Errorf("delete %s from %s of %s: %w", ipn, lab.UplinkName, t.Node, err)
	}
	return nil
}

const (
	rpKey = "net.ipv4.conf." + lab.UplinkName + ".rp_filter"
	// rpLink is the node's second uplink of rp-filter-strict.
	rpLink = "eth1"
)

// injectRPFilter makes the node multi-homed and its routing asymmetric: a second uplink
// eth1 into the underlay bridge (no ARP, a static neighbour) carries the route to the
// external host, whose packets keep arriving on eth0 (the host knows the node's address on
// eth0 only). Loose or no reverse-path filtering lets them in and the replies leave by eth1;
// strict filtering on eth0 drops them.
func injectRPFilter(_ context.Context, t Target) (map[string]string, error) {
	cfg := t.Lab.State.Config
	extMAC, err := linkMAC(cfg.ExtNetns(), lab.UplinkName)
	if err != nil {
		return nil, err
	}
	h, err := nodeHandle(t)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	hub, err := netns.GetFromPath(lab.NetnsPath(cfg.HubNetns()))
	if err != nil {
		return nil, fmt.Errorf("open hub namespace: %w", err)
	}
	defer func() { _ = hub.Close() }()
	hubPort := "rpf-" + t.Node
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: rpLink}, PeerName: hubPort, PeerNamespace: netlink.NsFd(int(hub))}
	if err := h.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("add second uplink %s on %s: %w", rpLink, t.Node, err)
	}
	hh, err := lab.Handle(cfg.HubNetns())
	if err != nil {
		return nil, err
	}
	defer hh.Close()
	port, err := hh.LinkByName(hubPort)
	if err != nil {
		return nil, fmt.Errorf("find %s in the hub: %w", hubPort, err)
	}
	br, err := hh.LinkByName(lab.BridgeName)
	if err != nil {
		return nil, fmt.Errorf("find %s in the hub: %w", lab.BridgeName, err)
	}
	if err := hh.LinkSetMaster(port, br); err != nil {
		return nil, fmt.Errorf("attach %s to %s: %w", hubPort, lab.BridgeName, err)
	}
	if err := hh.LinkSetUp(port); err != nil {
		return nil, fmt.Errorf("set %s up: %w", hubPort, err)
	}
	l, err := h.LinkByName(rpLink)
	if err != nil {
		return nil, fmt.Errorf("find %s on %s: %w", rpLink, t.Node, err)
	}
	if err := h.LinkSetARPOff(l); err != nil {
		return nil, fmt.Errorf("arp off on %s of %s: %w", rpLink, t.Node, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("set %s of %s up: %w", rpLink, t.Node, err)
	}
	ext := net.IP(cfg.ExtIP().AsSlice())
	if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: lab.IPNet(cfg.ExtIP(), 32), Scope: netlink.SCOPE_LINK}); err != nil {
		return nil, fmt.Errorf("route %s via %s on %s: %w", ext, rpLink, t.Node, err)
	}
	if err := h.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
		IP: ext, HardwareAddr: extMAC}); err != nil {
		return nil, fmt.Errorf("neighbour %s on %s of %s: %w", ext, rpLink, t.Node, err)
	}
	return setSysctl(t, rpKey, "1")
}

func healRPFilter(_ context.Context, t Target, d map[string]string) error {
	old := d["old"]
	if old == "" {
		old = "0"
	}
	if err := lab.SetSysctl(t.Netns(), rpKey, old); err != nil {
		return err
	}
	h, err := nodeHandle(t)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(rpLink)
	if err != nil {
		return nil // already gone
	}
	if err := h.LinkDel(l); err != nil {
		return fmt.Errorf("delete %s of %s: %w", rpLink, t.Node, err)
	}
	return nil
}

// linkMAC reads the hardware address of link in a lab namespace.
func linkMAC(netnsName, link string) (net.HardwareAddr, error) {
	h, err := lab.Handle(netnsName)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	l, err := h.LinkByName(link)
	if err != nil {
		return nil, fmt.Errorf("find %s in %s: %w", link, netnsName, err)
	}
	return l.Attrs().HardwareAddr, nil
}
