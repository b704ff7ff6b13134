package kubelet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/netdoctor/netdoctor/internal/lab"
	"github.com/netdoctor/netdoctor/internal/lab/flannel"
	"github.com/netdoctor/netdoctor/internal/namespace"
)

// PodNet is the network plumbing of one pod, as the bridge CNI plugin with flannel's
// configuration makes it.
type PodNet struct {
	Netns    string // pod namespace name
	HostVeth string // veth end on the node, enslaved to cni0
	IP       netip.Addr
	PodCIDR  netip.Prefix
}

// SetupPodNet creates the pod's namespace and plumbing (idempotent): a veth pair with HostVeth
// in the node (the caller's namespace, nh) attached to cni0 and eth0 in the pod with IP/len,
// MTU 1450, and a default route via cni0's address.
// Equivalent to: ip netns add POD; ip link add VETH mtu 1450 type veth peer eth0 netns POD;
// ip link set VETH master cni0 up; ip -n POD addr add IP/24 dev eth0; ip -n POD route add default via GW.
func SetupPodNet(nh *netlink.Handle, p PodNet) error {
	if !namespace.Exists(p.Netns) {
		if err := namespace.Create(p.Netns); err != nil {
			return err
		}
	}
	ph, err := lab.Handle(p.Netns)
	if err != nil {
		return err
	}
	defer ph.Close()
	lo, err := ph.LinkByName("lo")
	if err == nil {
		_ = ph.LinkSetUp(lo)
	}
	if _, err := ph.LinkByName("eth0"); err == nil {
		return nil // already plumbed
	}
	if old, err := nh.LinkByName(p.HostVeth); err == nil {
		_ = nh.LinkDel(old) // half-made by an earlier attempt
	}
	pns, err := netns.GetFromPath(lab.NetnsPath(p.Netns))
	if err != nil {
		return fmt.Errorf("open pod netns %s: %w", p.Netns, err)
	}
	defer func() { _ = pns.Close() }()
	br, err := nh.LinkByName(flannel.BridgeName)
	if err != nil {
		return fmt.Errorf("find %s: %w", flannel.BridgeName, err)
	}
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: p.HostVeth, MTU: flannel.MTU, MasterIndex: br.Attrs().Index},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(pns)),
	}
	if err := nh.LinkAdd(v); err != nil {
		return fmt.Errorf("create veth %s for pod netns %s: %w", p.HostVeth, p.Netns, err)
	}
	hv, err := nh.LinkByName(p.HostVeth)
	if err != nil {
		return fmt.Errorf("find %s: %w", p.HostVeth, err)
	}
	_ = nh.LinkSetHairpin(hv, true)
	if err := nh.LinkSetUp(hv); err != nil {
		return fmt.Errorf("bring up %s: %w", p.HostVeth, err)
	}
	eth, err := ph.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find eth0 in %s: %w", p.Netns, err)
	}
	if err := ph.LinkSetMTU(eth, flannel.MTU); err != nil {
		return fmt.Errorf("mtu of eth0 in %s: %w", p.Netns, err)
	}
	if err := ph.AddrAdd(eth, &netlink.Addr{IPNet: lab.IPNet(p.IP, p.PodCIDR.Bits())}); err != nil {
		return fmt.Errorf("address %s in %s: %w", p.IP, p.Netns, err)
	}
	if err := ph.LinkSetUp(eth); err != nil {
		return fmt.Errorf("bring up eth0 in %s: %w", p.Netns, err)
	}
	gw := flannel.GatewayIP(p.PodCIDR)
	if err := ph.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.IP(gw.AsSlice())}); err != nil {
		return fmt.Errorf("default route via %s in %s: %w", gw, p.Netns, err)
	}
	return nil
}

// TeardownPodNet deletes the pod's veth and namespace; missing parts are not errors.
func TeardownPodNet(nh *netlink.Handle, p PodNet) error {
	var errs []error
	if l, err := nh.LinkByName(p.HostVeth); err == nil {
		if err := nh.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", p.HostVeth, err))
		}
	}
	if err := namespace.Delete(p.Netns); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
