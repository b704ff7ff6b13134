// Package flannel reproduces the datapath of flannel's VXLAN backend on a lab node, exactly as
// flanneld with the kube subnet manager programs it: the cni0 bridge holding the first address
// of the node's pod CIDR, the flannel.1 VXLAN device (VNI 1, UDP 8472, local = the node's
// public IP on its uplink, no learning, MTU 1450) holding the pod CIDR's network address as a
// /32, and for every peer node a route "peerCIDR via peer.0 dev flannel.1 onlink", a permanent
// neighbour "peer.0 lladdr peerVtepMAC" and an FDB entry "peerVtepMAC dst peerPublicIP"; the
// node annotations flannel publishes (flannel.alpha.coreos.com/...), the subnet.env file, and
// flannel's iptables rules (FLANNEL-POSTRTG masquerade, FLANNEL-FWD accepts).
package flannel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netdoctor/netdoctor/internal/command"
)

// Flannel's fixed names and numbers for the VXLAN backend.
const (
	VXLANName  = "flannel.1"
	BridgeName = "cni0"
	VNI        = 1
	Port       = 8472
	MTU        = 1450
)

// Annotation keys flanneld's kube subnet manager writes on its Node.
const (
	AnnoPublicIP          = "flannel.alpha.coreos.com/public-ip"
	AnnoBackendType       = "flannel.alpha.coreos.com/backend-type"
	AnnoBackendData       = "flannel.alpha.coreos.com/backend-data"
	AnnoKubeSubnetManager = "flannel.alpha.coreos.com/kube-subnet-manager"
)

// Local describes this node's side of the overlay.
type Local struct {
	PublicIP    netip.Addr   // underlay address, the VXLAN source
	Uplink      string       // underlay interface name
	PodCIDR     netip.Prefix // this node's pod CIDR (Node.spec.podCIDR)
	ClusterCIDR netip.Prefix // the whole pod network (flannel's Network)
}

// Peer is another node as seen through its annotations and pod CIDR.
type Peer struct {
	Node     string
	PublicIP netip.Addr
	PodCIDR  netip.Prefix
	VtepMAC  net.HardwareAddr
}

// VtepIP is the peer's flannel.1 address: the network address of its pod CIDR.
func (p Peer) VtepIP() netip.Addr { return p.PodCIDR.Masked().Addr() }

// GatewayIP is the first address of a pod CIDR: cni0's address and the pods' gateway.
func GatewayIP(podCIDR netip.Prefix) netip.Addr { return podCIDR.Masked().Addr().Next() }

// SetupLocal creates (or keeps) cni0 and flannel.1 in the namespace of h and returns
// flannel.1's MAC address (the VtepMAC peers need).
// Equivalent to:
//
//	ip link add flannel.1 type vxlan id 1 local PUBLICIP dev UPLINK dstport 8472 nolearning
//	ip link set flannel.1 mtu 1450 up; ip addr add POD.0/32 dev flannel.1
//	ip link add cni0 type bridge; ip link set cni0 mtu 1450 up; ip addr add POD.1/N dev cni0
func SetupLocal(h *netlink.Handle, l Local) (net.HardwareAddr, error) {
	up, err := h.LinkByName(l.Uplink)
	if err != nil {
		return nil, fmt.Errorf("find uplink %s: %w", l.Uplink, err)
	}
	vx, err := h.LinkByName(VXLANName)
	if err != nil {
		v := &netlink.Vxlan{
			LinkAttrs:    netlink.LinkAttrs{Name: VXLANName, MTU: MTU},
			VxlanId:      VNI,
			VtepDevIndex: up.Attrs().Index,
			SrcAddr:      net.IP(l.PublicIP.AsSlice()),
			Port:         Port,
			Learning:     false,
		}
		if err := h.LinkAdd(v); err != nil {
			return nil, fmt.Errorf("create %s: %w", VXLANName, err)
		}
		if vx, err = h.LinkByName(VXLANName); err != nil {
			return nil, fmt.Errorf("find %s: %w", VXLANName, err)
		}
	}
	if err := ensureAddr(h, vx, netlink.Addr{IPNet: ipnet(l.PodCIDR.Masked().Addr(), 32)}); err != nil {
		return nil, err
	}
	if err := h.LinkSetUp(vx); err != nil {
		return nil, fmt.Errorf("bring up %s: %w", VXLANName, err)
	}

	br, err := h.LinkByName(BridgeName)
	if err != nil {
		b := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: BridgeName, MTU: MTU}}
		if err := h.LinkAdd(b); err != nil {
			return nil, fmt.Errorf("create %s: %w", BridgeName, err)
		}
		if br, err = h.LinkByName(BridgeName); err != nil {
			return nil, fmt.Errorf("find %s: %w", BridgeName, err)
		}
	}
	if err := ensureAddr(h, br, netlink.Addr{IPNet: ipnet(GatewayIP(l.PodCIDR), l.PodCIDR.Bits())}); err != nil {
		return nil, err
	}
	if err := h.LinkSetUp(br); err != nil {
		return nil, fmt.Errorf("bring up %s: %w", BridgeName, err)
	}
	return vx.Attrs().HardwareAddr, nil
}

func ensureAddr(h *netlink.Handle, l netlink.Link, a netlink.Addr) error {
	if err := h.AddrAdd(l, &a); err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("address %s on %s: %w", a.IPNet, l.Attrs().Name, err)
	}
	return nil
}

func ipnet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(bits, 32)}
}

// AddPeer programs the route, neighbour and FDB entry for one peer, replacing what is there.
// Equivalent to:
//
//	ip route replace PEERCIDR via PEER.0 dev flannel.1 onlink
//	ip neigh replace PEER.0 lladdr MAC dev flannel.1 nud permanent
//	bridge fdb replace MAC dev flannel.1 dst PEERPUBLICIP self permanent
func AddPeer(h *netlink.Handle, p Peer) error {
	vx, err := h.LinkByName(VXLANName)
	if err != nil {
		return fmt.Errorf("find %s: %w", VXLANName, err)
	}
	idx := vx.Attrs().Index
	vtep := net.IP(p.VtepIP().AsSlice())
	if err := h.NeighSet(&netlink.Neigh{
		LinkIndex: idx, Family: unix.AF_INET, State: netlink.NUD_PERMANENT, Type: unix.RTN_UNICAST,
		IP: vtep, HardwareAddr: p.VtepMAC,
	}); err != nil {
		return fmt.Errorf("neighbour %s lladdr %s for node %s: %w", vtep, p.VtepMAC, p.Node, err)
	}
	if err := h.NeighSet(&netlink.Neigh{
		LinkIndex: idx, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF,
		IP: net.IP(p.PublicIP.AsSlice()), HardwareAddr: p.VtepMAC,
	}); err != nil {
		return fmt.Errorf("fdb %s dst %s for node %s: %w", p.VtepMAC, p.PublicIP, p.Node, err)
	}
	r := &netlink.Route{
		LinkIndex: idx, Dst: prefixNet(p.PodCIDR), Gw: vtep, Flags: int(netlink.FLAG_ONLINK),
	}
	if err := h.RouteReplace(r); err != nil {
		return fmt.Errorf("route %s via %s dev %s onlink for node %s: %w", p.PodCIDR, vtep, VXLANName, p.Node, err)
	}
	return nil
}

// DelPeer removes what AddPeer programmed; missing entries are not errors.
func DelPeer(h *netlink.Handle, p Peer) error {
	vx, err := h.LinkByName(VXLANName)
	if err != nil {
		return fmt.Errorf("find %s: %w", VXLANName, err)
	}
	idx := vx.Attrs().Index
	var errs []error
	ignore := func(err error) bool {
		return err == nil || errors.Is(err, syscall.ESRCH) || errors.Is(err, syscall.ENOENT)
	}
	if err := h.RouteDel(&netlink.Route{LinkIndex: idx, Dst: prefixNet(p.PodCIDR), Gw: net.IP(p.VtepIP().AsSlice())}); !ignore(err) {
		errs = append(errs, fmt.Errorf("delete route %s: %w", p.PodCIDR, err))
	}
	if err := h.NeighDel(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_INET, IP: net.IP(p.VtepIP().AsSlice())}); !ignore(err) {
		errs = append(errs, fmt.Errorf("delete neighbour %s: %w", p.VtepIP(), err))
	}
	if err := h.NeighDel(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF, State: netlink.NUD_PERMANENT,
		IP: net.IP(p.PublicIP.AsSlice()), HardwareAddr: p.VtepMAC}); !ignore(err) {
		errs = append(errs, fmt.Errorf("delete fdb %s: %w", p.VtepMAC, err))
	}
	return errors.Join(errs...)
}

func prefixNet(p netip.Prefix) *net.IPNet {
	p = p.Masked()
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), 32)}
}

// BackendData is flannel's backend-data annotation for VXLAN.
type BackendData struct {
	VNI     int    `json:"VNI,omitempty"`
	VtepMAC string `json:"VtepMAC"`
}

// Annotations returns the annotations flanneld puts on its own Node.
func Annotations(publicIP netip.Addr, mac net.HardwareAddr) map[string]string {
	bd, _ := json.Marshal(BackendData{VNI: VNI, VtepMAC: mac.String()})
	return map[string]string{
		AnnoPublicIP:          publicIP.String(),
		AnnoBackendType:       "vxlan",
		AnnoBackendData:       string(bd),
		AnnoKubeSubnetManager: "true",
	}
}

// PeerFromNode reads a peer from a Node's name, pod CIDR and annotations; ok is false while
// the node has not published them yet (or is not a VXLAN flannel node).
func PeerFromNode(name, podCIDR string, annotations map[string]string) (Peer, bool) {
	if annotations[AnnoBackendType] != "vxlan" || podCIDR == "" {
		return Peer{}, false
	}
	ip, err := netip.ParseAddr(annotations[AnnoPublicIP])
	if err != nil {
		return Peer{}, false
	}
	cidr, err := netip.ParsePrefix(podCIDR)
	if err != nil {
		return Peer{}, false
	}
	var bd BackendData
	if err := json.Unmarshal([]byte(annotations[AnnoBackendData]), &bd); err != nil {
		return Peer{}, false
	}
	mac, err := net.ParseMAC(bd.VtepMAC)
	if err != nil {
		return Peer{}, false
	}
	return Peer{Node: name, PublicIP: ip, PodCIDR: cidr, VtepMAC: mac}, true
}

// Equal reports whether two peers program the same entries.
func (p Peer) Equal(o Peer) bool {
	return p.Node == o.Node && p.PublicIP == o.PublicIP && p.PodCIDR == o.PodCIDR && p.VtepMAC.String() == o.VtepMAC.String()
}

// SubnetEnv is the content of flannel's /run/flannel/subnet.env for this node.
func SubnetEnv(l Local) string {
	return "FLANNEL_NETWORK=" + l.ClusterCIDR.String() + "\n" +
		"FLANNEL_SUBNET=" + netip.PrefixFrom(GatewayIP(l.PodCIDR), l.PodCIDR.Bits()).String() + "\n" +
		"FLANNEL_MTU=" + strconv.Itoa(MTU) + "\n" +
		"FLANNEL_IPMASQ=true\n"
}

// WriteSubnetEnv writes SubnetEnv to path (creating its directory).
func WriteSubnetEnv(path string, l Local) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.WriteFile(path, []byte(SubnetEnv(l)), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Rule is one iptables rule flannel keeps: table, chain, position (-I or -A) and spec.
type Rule struct {
	Table, Chain string
	Insert       bool
	Spec         []string
}

// Rules returns flannel's masquerade and forward rules for its network and this node's subnet,
// in flannel's order (the kube-proxy mark 0x4000 is left to kube-proxy).
func Rules(clusterCIDR, podCIDR netip.Prefix) []Rule {
	n, sn := clusterCIDR.String(), podCIDR.Masked().String()
	masq := []string{"-m", "comment", "--comment", "flanneld masq"}
	fwd := []string{"-m", "comment", "--comment", "flanneld forward"}
	j := func(parts ...[]string) []string {
		var out []string
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	return []Rule{
		{"nat", "POSTROUTING", true, j(masq, []string{"-j", "FLANNEL-POSTRTG"})},
		{"nat", "FLANNEL-POSTRTG", false, j([]string{"-m", "mark", "--mark", "0x4000/0x4000"}, masq, []string{"-j", "RETURN"})},
		{"nat", "FLANNEL-POSTRTG", false, j([]string{"-s", n, "-d", n}, masq, []string{"-j", "RETURN"})},
		{"nat", "FLANNEL-POSTRTG", false, j([]string{"-s", n, "!", "-d", "224.0.0.0/4"}, masq, []string{"-j", "MASQUERADE", "--random-fully"})},
		{"nat", "FLANNEL-POSTRTG", false, j([]string{"!", "-s", n, "-d", sn}, masq, []string{"-j", "RETURN"})},
		{"nat", "FLANNEL-POSTRTG", false, j([]string{"!", "-s", n, "-d", n}, masq, []string{"-j", "MASQUERADE", "--random-fully"})},
		{"filter", "FORWARD", false, j(fwd, []string{"-j", "FLANNEL-FWD"})},
		{"filter", "FLANNEL-FWD", false, j([]string{"-s", n}, fwd, []string{"-j", "ACCEPT"})},
		{"filter", "FLANNEL-FWD", false, j([]string{"-d", n}, fwd, []string{"-j", "ACCEPT"})},
	}
}

// EnsureRules creates flannel's chains and adds each missing rule (checked with -C), in the
// namespace at netnsPath ("" = the caller's).
func EnsureRules(ctx context.Context, netnsPath string, clusterCIDR, podCIDR netip.Prefix) error {
	for _, tc := range [][2]string{{"nat", "FLANNEL-POSTRTG"}, {"filter", "FLANNEL-FWD"}} {
		r, err := command.Run(ctx, command.Cmd{Name: "iptables", Args: []string{"-w", "5", "-t", tc[0], "-N", tc[1]}, Netns: netnsPath})
		if err != nil && (r == nil || !strings.Contains(string(r.Stderr), "exists")) {
			return fmt.Errorf("create chain %s/%s: %w", tc[0], tc[1], err)
		}
	}
	for _, rule := range Rules(clusterCIDR, podCIDR) {
		check := append([]string{"-w", "5", "-t", rule.Table, "-C", rule.Chain}, rule.Spec...)
		if _, err := command.Run(ctx, command.Cmd{Name: "iptables", Args: check, Netns: netnsPath}); err == nil {
			continue
		}
		op := "-A"
		args := []string{"-w", "5", "-t", rule.Table, op, rule.Chain}
		if rule.Insert {
			args = []string{"-w", "5", "-t", rule.Table, "-I", rule.Chain, "1"}
		}
		if _, err := command.Run(ctx, command.Cmd{Name: "iptables", Args: append(args, rule.Spec...), Netns: netnsPath}); err != nil {
			return fmt.Errorf("add flannel rule to %s/%s: %w", rule.Table, rule.Chain, err)
		}
	}
	return nil
}
