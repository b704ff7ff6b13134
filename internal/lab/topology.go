package lab

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/netdoctor/netdoctor/internal/namespace"
)

// Member is a namespace attached to the underlay bridge.
type Member struct {
	Netns    string     // namespace name
	HubPort  string     // the veth end in the hub namespace (max 15 characters)
	IP       netip.Addr // address of its uplink (eth0)
	Gateway  bool       // add a default route via the hub bridge (a dead end)
	NodeLike bool       // set node sysctls (ip_forward=1, bridge-nf-call-iptables=1)
}

// Members lists the namespaces of the lab's underlay, hub excluded.
func (c Config) Members() []Member {
	m := []Member{
		{Netns: c.CPNetns(), HubPort: "v-cp", IP: c.CPIP(), Gateway: true},
		{Netns: c.ExtNetns(), HubPort: "v-ext", IP: c.ExtIP()},
		{Netns: c.DNSNetns(), HubPort: "v-dns", IP: c.DNSIP()},
	}
	for i := 1; i <= c.Nodes; i++ {
		m = append(m, Member{Netns: c.NodeNetns(i), HubPort: "v-" + NodeName(i), IP: c.NodeIP(i), Gateway: true, NodeLike: true})
	}
	return m
}

// BuildTopology creates the lab's namespaces and links, recording each in st (saved before
// each creation, so a crash leaves a state `lab down` can clean from):
//   - hub namespace with the underlay bridge br0 (gateway address .1, never forwarding);
//   - one namespace per member with eth0 (a veth into br0) and its address;
//   - one veth into the root namespace, named RootLinkName, with the single address .254.
//
// Node namespaces get ip_forward=1 and bridge-nf-call-iptables=1 inside them.
// Nothing else in the root namespace changes.
func BuildTopology(c Config, st *State) error {
	bits := c.UnderlayCIDR.Bits()
	hub := c.HubNetns()
	if err := createNetns(st, hub); err != nil {
		return err
	}
	hh, err := Handle(hub)
	if err != nil {
		return err
	}
	defer hh.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: BridgeName}}
	if err := hh.LinkAdd(br); err != nil {
		return fmt.Errorf("create bridge %s in %s: %w", BridgeName, hub, err)
	}
	if err := hh.AddrAdd(br, &netlink.Addr{IPNet: IPNet(c.GatewayIP(), bits)}); err != nil {
		return fmt.Errorf("address %s on %s in %s: %w", c.GatewayIP(), BridgeName, hub, err)
	}
	if err := hh.LinkSetUp(br); err != nil {
		return fmt.Errorf("bring up %s in %s: %w", BridgeName, hub, err)
	}
	for _, m := range c.Members() {
		if err := createNetns(st, m.Netns); err != nil {
			return err
		}
		if err := attach(hh, br, m.Netns, m.HubPort); err != nil {
			return err
		}
		mh, err := Handle(m.Netns)
		if err != nil {
			return err
		}
		err = configureUplink(mh, m, c.GatewayIP(), bits)
		mh.Close()
		if err != nil {
			return err
		}
		if m.NodeLike {
			for _, kv := range [][2]string{
				{"net.ipv4.ip_forward", "1"},
				{"net.bridge.bridge-nf-call-iptables", "1"},
			} {
				if err := SetSysctl(m.Netns, kv[0], kv[1]); err != nil {
					return err
				}
			}
		}
	}
	return addRootLink(c, st, hh, br)
}

func createNetns(st *State, name string) error {
	if namespace.Exists(name) {
		return fmt.Errorf("network namespace %s already exists: run `netdoctor lab down --name %s` first", name, st.Config.Name)
	}
	st.addNetns(name)
	if err := st.Save(); err != nil {
		return err
	}
	if err := namespace.Create(name); err != nil {
		return err
	}
	h, err := Handle(name)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo in %s: %w", name, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring up lo in %s: %w", name, err)
	}
	return nil
}

// attach creates a veth pair: hubPort in the hub (enslaved to br, up) and eth0 in member.
func attach(hh *netlink.Handle, br netlink.Link, member, hubPort string) error {
	ns, err := netns.GetFromPath(NetnsPath(member))
	if err != nil {
		return fmt.Errorf("open netns %s: %w", member, err)
	}
	defer func() { _ = ns.Close() }()
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: hubPort, MTU: 1500},
		PeerName:      UplinkName,
		PeerNamespace: netlink.NsFd(int(ns)),
	}
	if err := hh.LinkAdd(v); err != nil {
		return fmt.Errorf("create veth %s (hub) <-> %s (%s): %w", hubPort, UplinkName, member, err)
	}
	l, err := hh.LinkByName(hubPort)
	if err != nil {
		return fmt.Errorf("find %s in hub: %w", hubPort, err)
	}
	if err := hh.LinkSetMaster(l, br); err != nil {
		return fmt.Errorf("attach %s to %s: %w", hubPort, BridgeName, err)
	}
	if err := hh.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring up %s: %w", hubPort, err)
	}
	return nil
}

func configureUplink(mh *netlink.Handle, m Member, gw netip.Addr, bits int) error {
	l, err := mh.LinkByName(UplinkName)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", UplinkName, m.Netns, err)
	}
	if err := mh.AddrAdd(l, &netlink.Addr{IPNet: IPNet(m.IP, bits)}); err != nil {
		return fmt.Errorf("address %s on %s in %s: %w", m.IP, UplinkName, m.Netns, err)
	}
	if err := mh.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring up %s in %s: %w", UplinkName, m.Netns, err)
	}
	if m.Gateway {
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw.AsSlice()}
		if err := mh.RouteAdd(r); err != nil {
			return fmt.Errorf("default route via %s in %s: %w", gw, m.Netns, err)
		}
	}
	return nil
}

// addRootLink creates the single root-namespace veth (RootLinkName) with the lab's one root
// address; its peer v-root joins br0 in the hub.
func addRootLink(c Config, st *State, hh *netlink.Handle, br netlink.Link) error {
	name := RootLinkName(c.Name)
	if _, err := netlink.LinkByName(name); err == nil {
		return fmt.Errorf("link %s already exists in the root namespace: run `netdoctor lab down --name %s` first", name, c.Name)
	}
	st.RootLink = name
	if err := st.Save(); err != nil {
		return err
	}
	hubNS, err := netns.GetFromPath(NetnsPath(c.HubNetns()))
	if err != nil {
		return fmt.Errorf("open netns %s: %w", c.HubNetns(), err)
	}
	defer func() { _ = hubNS.Close() }()
	root, err := rootHandle()
	if err != nil {
		return err
	}
	defer root.Close()
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: name, MTU: 1500},
		PeerName:      "v-root",
		PeerNamespace: netlink.NsFd(int(hubNS)),
	}
	if err := root.LinkAdd(v); err != nil {
		return fmt.Errorf("create root link %s: %w", name, err)
	}
	l, err := root.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find root link %s: %w", name, err)
	}
	if err := root.AddrAdd(l, &netlink.Addr{IPNet: IPNet(c.RootIP(), c.UnderlayCIDR.Bits())}); err != nil {
		return fmt.Errorf("address %s on root link %s: %w", c.RootIP(), name, err)
	}
	if err := root.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring up root link %s: %w", name, err)
	}
	p, err := hh.LinkByName("v-root")
	if err != nil {
		return fmt.Errorf("find v-root in hub: %w", err)
	}
	if err := hh.LinkSetMaster(p, br); err != nil {
		return fmt.Errorf("attach v-root to %s: %w", BridgeName, err)
	}
	if err := guardRootPort(c); err != nil {
		return err
	}
	if err := hh.LinkSetUp(p); err != nil {
		return fmt.Errorf("bring up v-root: %w", err)
	}
	return nil
}

// rootHandle is a netlink handle in the namespace `lab up` runs in (the host's): the
// process's own namespace, taken from the thread group leader.
func rootHandle() (*netlink.Handle, error) {
	ns, err := netns.GetFromPath(fmt.Sprintf("/proc/%d/ns/net", os.Getpid()))
	if err != nil {
		return nil, fmt.Errorf("open the host network namespace: %w", err)
	}
	defer func() { _ = ns.Close() }()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in the host namespace: %w", err)
	}
	return h, nil
}

// DeleteRootLink removes the lab's root link if present (deleting one veth end removes both).
func DeleteRootLink(name string) error {
	root, err := rootHandle()
	if err != nil {
		return err
	}
	defer root.Close()
	l, err := root.LinkByName(RootLinkName(name))
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find root link %s: %w", RootLinkName(name), err)
	}
	if _, ok := l.(*netlink.Veth); !ok {
		return fmt.Errorf("root link %s is a %s, not the lab's veth: left alone", RootLinkName(name), l.Type())
	}
	if err := root.LinkDel(l); err != nil {
		return fmt.Errorf("delete root link %s: %w", RootLinkName(name), err)
	}
	return nil
}

// ListOwnedNetns lists the named namespaces whose names carry the lab's prefix.
func ListOwnedNetns(name string) ([]string, error) {
	ents, err := os.ReadDir(namespace.NetnsDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("list %s: %w", namespace.NetnsDir, err)
	}
	prefix := NetnsPrefix(name)
	var out []string
	for _, e := range ents {
		if len(e.Name()) > len(prefix) && e.Name()[:len(prefix)] == prefix {
			out = append(out, e.Name())
		}
	}
	return out, nil
}
