package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/netdoctor/netdoctor/internal/command"
	"github.com/netdoctor/netdoctor/internal/lab"
	"github.com/netdoctor/netdoctor/internal/lab/flannel"
	"github.com/netdoctor/netdoctor/internal/namespace"
)

// overlay-source-mismatch, as seed 002 (case 1) saw it: a node with a static address and a
// DHCP address on its NIC, its VXLAN leaving from the DHCP address, and that address in
// conflict with another host of the underlay. Alone, a second address as flannel.1's local
// breaks nothing (see host.go); what breaks is what follows when flanneld restarts and picks
// the interface's other address: it publishes it as its public IP, the peers reprogram their
// FDB to it, and their tunnel traffic to the node goes to whoever wins ARP for that address.

// PodUDPArrives: one UDP datagram from the web pod on From to the web pod on To, read on a
// socket opened in To's pod namespace: one-way delivery, no reply needed ("can send").
const PodUDPArrives ProbeKind = "pod-udp-arrives"

// sourceMismatchHost is the host byte of the conflicting ("DHCP") address, as in the seed
// (.228): outside the nodes (.11-.50), the control plane, DNS, external and root addresses.
const sourceMismatchHost = 228

// arpTable is the nftables arp-family table in the node's namespace that keeps the node from
// answering ARP for the conflicting address (the external host wins ARP, deterministically).
const arpTable = "ndlab-overlay-source"

// arpAnnounceKey: with arp_announce 2 the node's own ARP requests carry its static address,
// so that the peers do not learn the conflicting address's owner from them.
const arpAnnounceKey = "net.ipv4.conf." + lab.UplinkName + ".arp_announce"

func init() {
	Register(Fault{
		ID: "overlay-source-mismatch", Group: "host",
		Summary: "a second (\"DHCP\") address X on the node's uplink became its VXLAN source and flannel public IP, and X is also held by another host of the underlay that wins ARP: " +
			"the node's tunnel packets leave from X and reach the peers (\"can send\"), the peers' tunnel packets to X go to the other host (\"cannot receive\"): cross-node pod traffic from and to the node fails, other node pairs work",
		Injection: "ip netns exec EXT ip addr add X/24 dev eth0; ip addr add X/24 dev eth0; nft add table arp " + arpTable + " (drop ARP requests for X); " +
			"sysctl -w " + arpAnnounceKey + "=2; ip link set flannel.1 type vxlan local X; kubectl annotate node NODE --overwrite " + flannel.AnnoPublicIP + "=X",
		Checks: []Check{
			{Kind: PodUDPArrives, From: Faulted, To: Peer},
			{Kind: PodUDPArrives, From: Peer, To: Faulted, Broken: true},
			{Kind: PodPing, From: Faulted, To: Peer, Broken: true},
			{Kind: PodTCP, From: Faulted, To: Peer, Broken: true},
			{Kind: PodTCP, From: Peer, To: Faulted, Broken: true},
			{Kind: PodTCP, From: Faulted, To: Other, Broken: true},
			{Kind: PodTCP, From: Peer, To: Other},
			{Kind: PodTCP, From: Other, To: Peer},
		},
		Inject: injectSourceMismatch,
		Heal:   healSourceMismatch,
	})
}

// SourceMismatchAddr is the conflicting address overlay-source-mismatch gives the node and
// the external host: the underlay's .228.
func SourceMismatchAddr(c lab.Config) netip.Addr {
	a := c.UnderlayCIDR.Masked().Addr().As4()
	a[3] = sourceMismatchHost
	return netip.AddrFrom4(a)
}

func underlayAddr(c lab.Config, a netip.Addr) *netlink.Addr {
	return &netlink.Addr{IPNet: lab.IPNet(a, c.UnderlayCIDR.Bits())}
}

// addUplinkAddr adds a to eth0 in the namespace netnsName (present already: no error).
func addUplinkAddr(c lab.Config, netnsName string, a netip.Addr) error {
	return withUplink(netnsName, func(h *netlink.Handle, up netlink.Link) error {
		if err := h.AddrAdd(up, underlayAddr(c, a)); err != nil && !errors.Is(err, syscall.EEXIST) {
			return fmt.Errorf("add %s to %s in %s: %w", a, lab.UplinkName, netnsName, err)
		}
		return nil
	})
}

// delUplinkAddr removes a from eth0 in the namespace netnsName (absent: no error).
func delUplinkAddr(c lab.Config, netnsName string, a netip.Addr) error {
	return withUplink(netnsName, func(h *netlink.Handle, up netlink.Link) error {
		if err := h.AddrDel(up, underlayAddr(c, a)); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) && !errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("delete %s from %s in %s: %w", a, lab.UplinkName, netnsName, err)
		}
		return nil
	})
}

// withUplink calls fn with a netlink handle in the namespace netnsName and its eth0.
func withUplink(netnsName string, fn func(h *netlink.Handle, up netlink.Link) error) error {
	h, err := lab.Handle(netnsName)
	if err != nil {
		return err
	}
	defer h.Close()
	up, err := h.LinkByName(lab.UplinkName)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", lab.UplinkName, netnsName, err)
	}
	return fn(h, up)
}

// setVXLANLocal changes flannel.1's local (source) address on the node, as flanneld does
// when it recreates the device with another public IP.
func setVXLANLocal(ctx context.Context, t Target, a netip.Addr) error {
	_, err := command.Run(ctx, command.Cmd{Name: "ip", Args: []string{"link", "set", flannel.VXLANName, "type", "vxlan", "local", a.String()}, Netns: t.NetnsPath()})
	if err != nil {
		return fmt.Errorf("set %s local %s on %s: %w", flannel.VXLANName, a, t.Node, err)
	}
	return nil
}

// annotatePublicIP sets the node's flannel public-ip annotation (what flanneld publishes and
// the peers' reconcilers program their FDB entry for the node from).
func annotatePublicIP(ctx context.Context, t Target, a netip.Addr) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{flannel.AnnoPublicIP: a.String()}}})
	if err != nil {
		return err
	}
	if _, err := t.Lab.Client.CoreV1().Nodes().Patch(ctx, t.Node, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("annotate node %s %s=%s: %w", t.Node, flannel.AnnoPublicIP, a, err)
	}
	return nil
}

// nodeVtepMAC reads the node's flannel.1 MAC from its backend-data annotation.
func nodeVtepMAC(ctx context.Context, t Target) (net.HardwareAddr, error) {
	n, err := t.Lab.Client.CoreV1().Nodes().Get(ctx, t.Node, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get node %s: %w", t.Node, err)
	}
	p, ok := flannel.PeerFromNode(n.Name, n.Spec.PodCIDR, n.Annotations)
	if !ok {
		return nil, fmt.Errorf("node %s has no flannel VXLAN lease", t.Node)
	}
	return p.VtepMAC, nil
}

// PeerFDBDst returns where the node netnsName's flannel.1 sends frames for VTEP MAC mac (the
// FDB entry's dst), or an invalid address if it has no entry.
func PeerFDBDst(netnsName string, mac net.HardwareAddr) (netip.Addr, error) {
	h, err := lab.Handle(netnsName)
	if err != nil {
		return netip.Addr{}, err
	}
	defer h.Close()
	vx, err := h.LinkByName(flannel.VXLANName)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("find %s in %s: %w", flannel.VXLANName, netnsName, err)
	}
	fdb, err := h.NeighList(vx.Attrs().Index, unix.AF_BRIDGE)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("list fdb of %s in %s: %w", flannel.VXLANName, netnsName, err)
	}
	for _, e := range fdb {
		if e.HardwareAddr.String() == mac.String() && e.IP != nil {
			if a, ok := netip.AddrFromSlice(e.IP.To4()); ok {
				return a, nil
			}
		}
	}
	return netip.Addr{}, nil
}

// waitPeersFDB waits until every other node's flannel.1 sends the node's VTEP MAC to dst.
func waitPeersFDB(ctx context.Context, t Target, mac net.HardwareAddr, dst netip.Addr) error {
	for _, n := range t.Lab.State.Nodes {
		if n.Name == t.Node {
			continue
		}
		err := waitFor(ctx, 30*time.Second, "the FDB entry of "+n.Name+" for "+t.Node+" ("+mac.String()+") to point at "+dst.String(), func() (bool, string) {
			got, err := PeerFDBDst(n.Netns, mac)
			if err != nil {
				return false, err.Error()
			}
			return got == dst, "it points at " + got.String()
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func nft(ctx context.Context, netnsPath string, stdin string, args ...string) error {
	_, err := command.Run(ctx, command.Cmd{Name: "nft", Args: args, Stdin: []byte(stdin), Netns: netnsPath})
	return err
}

func injectSourceMismatch(ctx context.Context, t Target) (map[string]string, error) {
	c := t.Lab.State.Config
	node, err := t.Lab.State.Node(t.Node)
	if err != nil {
		return nil, err
	}
	static, err := netip.ParseAddr(node.IP)
	if err != nil {
		return nil, fmt.Errorf("address %q of node %s: %w", node.IP, t.Node, err)
	}
	x := SourceMismatchAddr(c)
	mac, err := nodeVtepMAC(ctx, t)
	if err != nil {
		return nil, err
	}
	data := map[string]string{"static": static.String(), "addr": x.String()}
	// The other holder of X first, so that the peers' ARP for X is answered.
	if err := addUplinkAddr(c, c.ExtNetns(), x); err != nil {
		return data, err
	}
	// The node keeps silent on ARP for X, and asks ARP from its static address.
	rules := "table arp " + arpTable + " {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n" +
		"\t\tarp operation request arp daddr ip " + x.String() + " counter drop\n\t}\n}\n"
	if err := nft(ctx, t.NetnsPath(), rules, "-f", "-"); err != nil {
		return data, fmt.Errorf("add arp table %s on %s: %w", arpTable, t.Node, err)
	}
	old, err := setSysctl(t, arpAnnounceKey, "2")
	if err != nil {
		return data, err
	}
	data["arpAnnounce"] = old["old"]
	if err := addUplinkAddr(c, t.Netns(), x); err != nil {
		return data, err
	}
	if err := setVXLANLocal(ctx, t, x); err != nil {
		return data, err
	}
	if err := annotatePublicIP(ctx, t, x); err != nil {
		return data, err
	}
	return data, waitPeersFDB(ctx, t, mac, x)
}

func healSourceMismatch(ctx context.Context, t Target, d map[string]string) error {
	c := t.Lab.State.Config
	node, err := t.Lab.State.Node(t.Node)
	if err != nil {
		return err
	}
	static, err := netip.ParseAddr(node.IP)
	if err != nil {
		return fmt.Errorf("address %q of node %s: %w", node.IP, t.Node, err)
	}
	x := SourceMismatchAddr(c)
	if a, err := netip.ParseAddr(d["addr"]); err == nil {
		x = a
	}
	mac, err := nodeVtepMAC(ctx, t)
	if err != nil {
		return err
	}
	// The peers back on the static address first, then the node's own side.
	if err := annotatePublicIP(ctx, t, static); err != nil {
		return err
	}
	if err := waitPeersFDB(ctx, t, mac, static); err != nil {
		return err
	}
	var errs []error
	if err := setVXLANLocal(ctx, t, static); err != nil {
		errs = append(errs, err)
	}
	if err := delUplinkAddr(c, t.Netns(), x); err != nil {
		errs = append(errs, err)
	}
	if err := nft(ctx, t.NetnsPath(), "", "delete", "table", "arp", arpTable); err != nil && !strings.Contains(err.Error(), "No such file") {
		errs = append(errs, fmt.Errorf("delete arp table %s on %s: %w", arpTable, t.Node, err))
	}
	announce := d["arpAnnounce"]
	if announce == "" {
		announce = "0"
	}
	if err := lab.SetSysctl(t.Netns(), arpAnnounceKey, announce); err != nil {
		errs = append(errs, err)
	}
	if err := delUplinkAddr(c, c.ExtNetns(), x); err != nil {
		errs = append(errs, err)
	}
	// The nodes' neighbour entries for X (resolved to the external host) go too.
	for _, n := range t.Lab.State.Nodes {
		if err := forgetNeighbour(n.Netns, x); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// forgetNeighbour deletes the uplink's neighbour entry for a in namespace netnsName.
func forgetNeighbour(netnsName string, a netip.Addr) error {
	h, err := lab.Handle(netnsName)
	if err != nil {
		return err
	}
	defer h.Close()
	up, err := h.LinkByName(lab.UplinkName)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", lab.UplinkName, netnsName, err)
	}
	err = h.NeighDel(&netlink.Neigh{LinkIndex: up.Attrs().Index, Family: netlink.FAMILY_V4, IP: net.IP(a.AsSlice())})
	if err != nil && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("delete neighbour %s in %s: %w", a, netnsName, err)
	}
	return nil
}

// udpArrives sends one datagram from the pod src to the pod dst and reads it on a socket
// opened in dst's namespace.
func udpArrives(ctx context.Context, src, dst PodRef) error {
	var pc net.PacketConn
	err := namespace.Do(dst.Netns, func() error {
		var err error
		pc, err = net.ListenPacket("udp", net.JoinHostPort(dst.IP, "0"))
		return err
	})
	if err != nil {
		return fmt.Errorf("listen on %s in pod %s: %w", dst.IP, dst.Name, err)
	}
	defer func() { _ = pc.Close() }()
	addr := pc.LocalAddr().String()
	conn, err := Dial(ctx, src.Netns, "udp", addr, time.Second)
	if err != nil {
		return fmt.Errorf("udp socket to %s: %w", addr, err)
	}
	defer func() { _ = conn.Close() }()
	want := "ndlab " + src.Name + " -> " + dst.Name
	buf := make([]byte, 256)
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := conn.Write([]byte(want)); err != nil {
			return fmt.Errorf("send to %s: %w", addr, err)
		}
		_ = pc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, _, err := pc.ReadFrom(buf)
		if err == nil && string(buf[:n]) == want {
			return nil
		}
		if err == nil {
			continue
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return fmt.Errorf("read on %s: %w", addr, err)
		}
	}
	return fmt.Errorf("no datagram from pod %s (%s) reached pod %s at %s within 2s", src.Name, src.IP, dst.Name, addr)
}
