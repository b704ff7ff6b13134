package faults

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netdoctor/netdoctor/internal/command"
	"github.com/netdoctor/netdoctor/internal/lab"
	"github.com/netdoctor/netdoctor/internal/lab/flannel"
)

// The datapath group: kernel state of one node (sysctls, netfilter, routes, FDB, MTU).

// Checks shared by faults that cut the faulted node off the overlay.
var crossNodeCut = []Check{
	{Kind: PodPing, From: Faulted, To: Peer, Broken: true},
	{Kind: PodTCP, From: Faulted, To: Peer, Broken: true},
	{Kind: PodTCP, From: Peer, To: Faulted, Broken: true},
	{Kind: PodTCP, From: Peer, To: Other},
}

func init() {
	Register(Fault{
		ID: "ip-forward-disabled", Group: "datapath",
		Summary:   "net.ipv4.ip_forward=0 on the node: pod traffic leaving the node is not forwarded",
		Injection: "ip netns exec NODE sysctl -w net.ipv4.ip_forward=0",
		Checks:    crossNodeCut,
		Inject: func(_ context.Context, t Target) (map[string]string, error) {
			return setSysctl(t, "net.ipv4.ip_forward", "0")
		},
		Heal: restoreSysctl("net.ipv4.ip_forward"),
	})
	Register(Fault{
		ID: "bridge-nf-disabled", Group: "datapath",
		Summary:   "net.bridge.bridge-nf-call-iptables=0 on the node: bridged pod traffic skips kube-proxy's NAT",
		Injection: "ip netns exec NODE sysctl -w net.bridge.bridge-nf-call-iptables=0",
		Checks: []Check{
			// A pod reaching a Service whose endpoint sits on the same bridge: the DNAT is done
			// on the way in, but the reply is bridged past conntrack and never un-NATed.
			{Kind: PodServiceLocal, From: Faulted, To: Faulted, Broken: true},
			{Kind: PodServiceLocal, From: Peer, To: Peer},
			{Kind: PodTCP, From: Faulted, To: Peer},
		},
		Inject: func(_ context.Context, t Target) (map[string]string, error) {
			return setSysctl(t, "net.bridge.bridge-nf-call-iptables", "0")
		},
		Heal: restoreSysctl("net.bridge.bridge-nf-call-iptables"),
	})
	Register(Fault{
		ID: "forward-policy-drop", Group: "datapath",
		Summary:   "filter FORWARD policy DROP and pod traffic not accepted before it (flannel's FLANNEL-FWD jump missing)",
		Injection: "iptables -P FORWARD DROP; iptables -D FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD",
		Checks:    crossNodeCut,
		Inject:    injectForwardDrop,
		Heal:      healForwardDrop,
	})
	Register(Fault{
		ID: "overlay-port-blocked", Group: "datapath",
		Summary:   "a firewall rule on the node drops VXLAN (UDP 8472): cross-node pod traffic is lost",
		Injection: "iptables -I INPUT -p udp --dport 8472 -j DROP",
		Checks:    append([]Check{{Kind: PodPing, From: Peer, To: Faulted, Broken: true}}, crossNodeCut...),
		Inject: func(ctx context.Context, t Target) (map[string]string, error) {
			return nil, iptables(ctx, t, "-I", "INPUT", "-p", "udp", "--dport", strconv.Itoa(flannel.Port), "-m", "comment", "--comment", "ndlab fault overlay-port-blocked", "-j", "DROP")
		},
		Heal: func(ctx context.Context, t Target, _ map[string]string) error {
			return iptables(ctx, t, "-D", "INPUT", "-p", "udp", "--dport", strconv.Itoa(flannel.Port), "-m", "comment", "--comment", "ndlab fault overlay-port-blocked", "-j", "DROP")
		},
	})
	Register(Fault{
		ID: "pod-route-missing", Group: "datapath",
		Summary:   "the node lost its route to the peer's pod CIDR: traffic to that node's pods fails",
		Injection: "ip route del PEER_POD_CIDR dev flannel.1",
		Checks: []Check{
			{Kind: PodPing, From: Faulted, To: Peer, Broken: true},
			{Kind: PodTCP, From: Faulted, To: Peer, Broken: true},
			{Kind: PodTCP, From: Faulted, To: Other},
			{Kind: PodTCP, From: Other, To: Peer},
		},
		Inject: injectRouteMissing,
		Heal:   healPeer,
	})
	Register(Fault{
		ID: "overlay-fdb-missing", Group: "datapath",
		Summary:   "the node's VXLAN FDB entry for the peer's VTEP is gone: frames to it have no tunnel endpoint",
		Injection: "bridge fdb del PEER_VTEP_MAC dev flannel.1 dst PEER_IP self",
		Checks: []Check{
			{Kind: PodPing, From: Faulted, To: Peer, Broken: true},
			{Kind: PodTCP, From: Faulted, To: Peer, Broken: true},
			{Kind: PodTCP, From: Faulted, To: Other},
			{Kind: PodTCP, From: Other, To: Peer},
		},
		Inject: injectFDBMissing,
		Heal:   healPeer,
	})
	Register(Fault{
		ID: "mtu-mismatch", Group: "datapath",
		Summary:   "the node's uplink MTU was lowered to 1400 under flannel.1's 1450: full-size overlay packets are lost, small ones pass",
		Injection: "ip link set eth0 mtu 1400",
		Checks: []Check{
			{Kind: PodLargePing, From: Faulted, To: Peer, Broken: true},
			{Kind: PodLargePing, From: Peer, To: Faulted, Broken: true},
			{Kind: PodPing, From: Faulted, To: Peer},
			{Kind: PodLargePing, From: Peer, To: Other},
		},
		Inject: func(_ context.Context, t Target) (map[string]string, error) {
			old, err := setMTU(t, 1400)
			if err != nil {
				return nil, err
			}
			return map[string]string{"mtu": strconv.Itoa(old)}, nil
		},
		Heal: func(_ context.Context, t Target, d map[string]string) error {
			mtu, err := strconv.Atoi(d["mtu"])
			if err != nil || mtu == 0 {
				mtu = 1500
			}
			_, err = setMTU(t, mtu)
			return err
		},
	})
}

func setSysctl(t Target, key, value string) (map[string]string, error) {
	old, err := lab.GetSysctl(t.Netns(), key)
	if err != nil {
		return nil, err
	}
	if err := lab.SetSysctl(t.Netns(), key, value); err != nil {
		return nil, err
	}
	return map[string]string{"old": old}, nil
}

func restoreSysctl(key string) func(context.Context, Target, map[string]string) error {
	return func(_ context.Context, t Target, d map[string]string) error {
		v := d["old"]
		if v == "" {
			v = "1"
		}
		return lab.SetSysctl(t.Netns(), key, v)
	}
}

func iptables(ctx context.Context, t Target, args ...string) error {
	_, err := command.Run(ctx, command.Cmd{Name: "iptables", Args: append([]string{"-w", "5"}, args...), Netns: t.NetnsPath()})
	return err
}

var flannelFwdJump = []string{"FORWARD", "-m", "comment", "--comment", "flanneld forward", "-j", "FLANNEL-FWD"}

func injectForwardDrop(ctx context.Context, t Target) (map[string]string, error) {
	out, err := command.Output(ctx, t.NetnsPath(), "iptables-save", "-t", "filter")
	if err != nil {
		return nil, err
	}
	policy := "ACCEPT"
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, ":FORWARD ") {
			if f := strings.Fields(line); len(f) >= 2 {
				policy = f[1]
			}
		}
	}
	if err := iptables(ctx, t, "-P", "FORWARD", "DROP"); err != nil {
		return nil, err
	}
	if err := iptables(ctx, t, append([]string{"-D"}, flannelFwdJump...)...); err != nil {
		return nil, err
	}
	return map[string]string{"policy": policy}, nil
}

func healForwardDrop(ctx context.Context, t Target, d map[string]string) error {
	policy := d["policy"]
	if policy == "" {
		policy = "ACCEPT"
	}
	if err := iptables(ctx, t, append([]string{"-C"}, flannelFwdJump...)...); err != nil {
		if err := iptables(ctx, t, append([]string{"-A"}, flannelFwdJump...)...); err != nil {
			return err
		}
	}
	return iptables(ctx, t, "-P", "FORWARD", policy)
}

// peerOf reads the peer's flannel lease from its Node (pod CIDR, public IP, VTEP MAC).
func peerOf(ctx context.Context, t Target) (flannel.Peer, error) {
	n, err := t.Lab.Client.CoreV1().Nodes().Get(ctx, t.Peer, metav1.GetOptions{})
	if err != nil {
		return flannel.Peer{}, fmt.Errorf("get node %s: %w", t.Peer, err)
	}
	p, ok := flannel.PeerFromNode(n.Name, n.Spec.PodCIDR, n.Annotations)
	if !ok {
		return flannel.Peer{}, fmt.Errorf("node %s has no flannel VXLAN lease", t.Peer)
	}
	return p, nil
}

func nodeHandle(t Target) (*netlink.Handle, error) { return lab.Handle(t.Netns()) }

func injectRouteMissing(ctx context.Context, t Target) (map[string]string, error) {
	p, err := peerOf(ctx, t)
	if err != nil {
		return nil, err
	}
	h, err := nodeHandle(t)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	vx, err := h.LinkByName(flannel.VXLANName)
	if err != nil {
		return nil, fmt.Errorf("find %s on %s: %w", flannel.VXLANName, t.Node, err)
	}
	if err := h.RouteDel(&netlink.Route{LinkIndex: vx.Attrs().Index, Dst: lab.PrefixNet(p.PodCIDR)}); err != nil {
		return nil, fmt.Errorf("delete route %s on %s: %w", p.PodCIDR, t.Node, err)
	}
	return map[string]string{"peerCIDR": p.PodCIDR.String()}, nil
}

func injectFDBMissing(ctx context.Context, t Target) (map[string]string, error) {
	p, err := peerOf(ctx, t)
	if err != nil {
		return nil, err
	}
	h, err := nodeHandle(t)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	vx, err := h.LinkByName(flannel.VXLANName)
	if err != nil {
		return nil, fmt.Errorf("find %s on %s: %w", flannel.VXLANName, t.Node, err)
	}
	err = h.NeighDel(&netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
		State: netlink.NUD_PERMANENT, IP: net.IP(p.PublicIP.AsSlice()), HardwareAddr: p.VtepMAC})
	if err != nil {
		return nil, fmt.Errorf("delete fdb %s dst %s on %s: %w", p.VtepMAC, p.PublicIP, t.Node, err)
	}
	return map[string]string{"peerMAC": p.VtepMAC.String(), "peerIP": p.PublicIP.String()}, nil
}

// healPeer reprograms the peer's route, neighbour and FDB entry as flanneld would on a lease
// event.
func healPeer(ctx context.Context, t Target, _ map[string]string) error {
	p, err := peerOf(ctx, t)
	if err != nil {
		return err
	}
	h, err := nodeHandle(t)
	if err != nil {
		return err
	}
	defer h.Close()
	return flannel.AddPeer(h, p)
}

func setMTU(t Target, mtu int) (int, error) {
	h, err := nodeHandle(t)
	if err != nil {
		return 0, err
	}
	defer h.Close()
	l, err := h.LinkByName(lab.UplinkName)
	if err != nil {
		return 0, fmt.Errorf("find %s on %s: %w", lab.UplinkName, t.Node, err)
	}
	old := l.Attrs().MTU
	if err := h.LinkSetMTU(l, mtu); err != nil {
		return 0, fmt.Errorf("set mtu %d on %s of %s: %w", mtu, lab.UplinkName, t.Node, err)
	}
	return old, nil
}
