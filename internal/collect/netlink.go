package collect

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/netdoctor/netdoctor/internal/facts"
)

// openHandle opens a rtnetlink socket inside the target namespace, so that
// no thread has to stay switched while the dumps run.
func (c *collector) openHandle() (*netlink.Handle, error) {
	if c.nsPath == "" {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return nil, fmt.Errorf("open netlink socket in current netns: %w", err)
		}
		return h, nil
	}
	ns, err := netns.GetFromPath(c.nsPath)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", c.nsPath, err)
	}
	defer func() { _ = ns.Close() }()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open netlink socket in %s: %w", c.nsLabel(), err)
	}
	return h, nil
}

// dump runs a netlink dump, retrying when the kernel says the dump was
// interrupted by a concurrent change. After the last try an interrupted dump
// is kept (partial facts) and noted in Errors.
func dump[T any](c *collector, section string, f func() ([]T, error)) ([]T, bool) {
	var out []T
	var err error
	for range 3 {
		out, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	switch {
	case err == nil:
		return out, true
	case errors.Is(err, netlink.ErrDumpInterrupted):
		c.fail(section, fmt.Errorf("dump %s in %s: %w (results may be incomplete)", section, c.nsLabel(), err))
		return out, true
	default:
		c.fail(section, fmt.Errorf("dump %s in %s: %w", section, c.nsLabel(), err))
		return nil, false
	}
}

// collectNetlink fills links, addresses, routes, rules, neighbours and the
// FDB through one rtnetlink socket opened in the target namespace.
// Equivalent to: ip -d -s link; ip addr; ip route show table all; ip -6 route
// show table all; ip rule; ip neigh; bridge fdb.
func (c *collector) collectNetlink(want map[string]bool) {
	h, err := c.openHandle()
	if err != nil {
		for _, s := range []string{SectionLinks, SectionAddresses, SectionRoutes, SectionRules, SectionNeighbors, SectionFDB, SectionQdiscs} {
			if want[s] {
				c.fail(s, err)
			}
		}
		return
	}
	defer h.Close()

	links, ok := dump(c, SectionLinks, h.LinkList)
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	if ok && want[SectionLinks] {
		c.snap.Links = convertLinks(links, names)
	}
	if want[SectionAddresses] || want[SectionIPVS] {
		addrs, _ := dump(c, SectionAddresses, func() ([]netlink.Addr, error) { return h.AddrList(nil, netlink.FAMILY_ALL) })
		c.snap.Addresses = convertAddrs(addrs, names)
	}
	if want[SectionRoutes] {
		routes, _ := dump(c, SectionRoutes, func() ([]netlink.Route, error) {
			return h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		})
		c.snap.Routes = convertRoutes(routes, names)
	}
	if want[SectionRules] {
		// One dump per family: an AF_UNSPEC dump also returns the multicast
		// routing (ipmr) rules.
		v4, _ := dump(c, SectionRules, func() ([]netlink.Rule, error) { return h.RuleList(netlink.FAMILY_V4) })
		v6, _ := dump(c, SectionRules, func() ([]netlink.Rule, error) { return h.RuleList(netlink.FAMILY_V6) })
		c.snap.Rules = convertRules(append(v4, v6...))
	}
	if want[SectionNeighbors] {
		v4, _ := dump(c, SectionNeighbors, func() ([]netlink.Neigh, error) { return h.NeighList(0, netlink.FAMILY_V4) })
		v6, _ := dump(c, SectionNeighbors, func() ([]netlink.Neigh, error) { return h.NeighList(0, netlink.FAMILY_V6) })
		c.snap.Neighbors = convertNeighbors(append(v4, v6...), names)
	}
	if want[SectionFDB] {
		fdb, _ := dump(c, SectionFDB, func() ([]netlink.Neigh, error) { return h.NeighList(0, unix.AF_BRIDGE) })
		c.snap.FDB = convertFDB(fdb, names)
	}
	if want[SectionQdiscs] {
		qs, ok := dump(c, SectionQdiscs, func() ([]netlink.Qdisc, error) { return h.QdiscList(nil) })
		if ok {
			c.snap.Qdiscs = convertQdiscs(qs, names)
		}
	}
}

// tcHandle prints a tc handle as tc does: "1:" for a qdisc handle, "1:2" for a class.
func tcHandle(h uint32) string {
	major, minor := h>>16, h&0xffff
	if minor == 0 {
		return strconv.FormatUint(uint64(major), 16) + ":"
	}
	return strconv.FormatUint(uint64(major), 16) + ":" + strconv.FormatUint(uint64(minor), 16)
}

func tcParent(p uint32) string {
	switch p {
	case netlink.HANDLE_ROOT:
		return "root"
	case netlink.HANDLE_INGRESS:
		return "ingress"
	}
	return tcHandle(p)
}

func convertQdiscs(qs []netlink.Qdisc, names map[int]string) []facts.Qdisc {
	out := make([]facts.Qdisc, 0, len(qs))
	for _, q := range qs {
		a := q.Attrs()
		fq := facts.Qdisc{Link: names[a.LinkIndex], Kind: q.Type(), Handle: tcHandle(a.Handle), Parent: tcParent(a.Parent)}
		if st := a.Statistics; st != nil {
			if st.Basic != nil {
				fq.Packets, fq.Bytes = uint64(st.Basic.Packets), st.Basic.Bytes
			}
			if st.Queue != nil {
				fq.Drops, fq.Overlimits, fq.Requeues = uint64(st.Queue.Drops), uint64(st.Queue.Overlimits), uint64(st.Queue.Requeues)
				fq.Backlog, fq.Qlen = uint64(st.Queue.Backlog), uint64(st.Queue.Qlen)
			}
		}
		out = append(out, fq)
	}
	return out
}

// linkFlagNames are the IFF_* flags in the order and spelling of ip link.
var linkFlagNames = []struct {
	bit  uint32
	name string
}{
	{unix.IFF_LOOPBACK, "loopback"}, {unix.IFF_BROADCAST, "broadcast"}, {unix.IFF_POINTOPOINT, "pointopoint"},
	{unix.IFF_MULTICAST, "multicast"}, {unix.IFF_NOARP, "noarp"}, {unix.IFF_ALLMULTI, "allmulti"},
	{unix.IFF_PROMISC, "promisc"}, {unix.IFF_MASTER, "master"}, {unix.IFF_SLAVE, "slave"},
	{unix.IFF_DEBUG, "debug"}, {unix.IFF_DYNAMIC, "dynamic"}, {unix.IFF_AUTOMEDIA, "automedia"},
	{unix.IFF_PORTSEL, "portsel"}, {unix.IFF_NOTRAILERS, "notrailers"}, {unix.IFF_UP, "up"},
	{unix.IFF_RUNNING, "running"}, {unix.IFF_LOWER_UP, "lower_up"}, {unix.IFF_DORMANT, "dormant"},
	{unix.IFF_ECHO, "echo"},
}

func flagNames(raw uint32) []string {
	var out []string
	for _, f := range linkFlagNames {
		if raw&f.bit != 0 {
			out = append(out, f.name)
		}
	}
	return out
}

func convertLinks(links []netlink.Link, names map[int]string) []facts.Link {
	out := make([]facts.Link, 0, len(links))
	for _, l := range links {
		a := l.Attrs()
		fl := facts.Link{
			Index:       a.Index,
			Name:        a.Name,
			Type:        l.Type(),
			MTU:         a.MTU,
			State:       strings.ToLower(a.OperState.String()),
			Up:          a.Flags&net.FlagUp != 0,
			Flags:       flagNames(a.RawFlags),
			MasterIndex: a.MasterIndex,
			Master:      names[a.MasterIndex],
			Parent:      a.ParentIndex,
			PeerNetnsID: -1,
		}
		if len(a.HardwareAddr) > 0 {
			fl.MAC = a.HardwareAddr.String()
		}
		if st := a.Statistics; st != nil {
			fl.Stats = &facts.LinkStats{
				RxPackets: st.RxPackets, TxPackets: st.TxPackets,
				RxBytes: st.RxBytes, TxBytes: st.TxBytes,
				RxDropped: st.RxDropped, TxDropped: st.TxDropped,
				RxErrors: st.RxErrors, TxErrors: st.TxErrors,
				RxFifo: st.RxFifoErrors, RxMissed: st.RxMissedErrors,
				TxFifo: st.TxFifoErrors, TxCarrier: st.TxCarrierErrors,
			}
		}
		switch v := l.(type) {
		case *netlink.Veth:
			// IFLA_LINK of a veth is the peer's ifindex, in the namespace
			// named by IFLA_LINK_NETNSID (-1 when it is this one).
			fl.PeerIndex = a.ParentIndex
			fl.PeerNetnsID = a.NetNsID
		case *netlink.Vxlan:
			x := &facts.VXLAN{
				VNI:         v.VxlanId,
				Port:        v.Port,
				DeviceIndex: v.VtepDevIndex,
				Device:      names[v.VtepDevIndex],
				Learning:    v.Learning,
			}
			if len(v.SrcAddr) > 0 && !v.SrcAddr.IsUnspecified() {
				x.Local = v.SrcAddr.String()
			}
			if len(v.Group) > 0 && !v.Group.IsUnspecified() {
				x.Group = v.Group.String()
			}
			fl.VXLAN = x
		case *netlink.Bridge:
			b := &facts.Bridge{}
			if v.VlanFiltering != nil {
				b.VlanFiltering = *v.VlanFiltering
			}
			fl.Bridge = b
		}
		out = append(out, fl)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out
}

func familyOf(ip net.IP) int {
	if ip.To4() != nil {
		return 4
	}
	return 6
}

func familyNumber(af int) int {
	if af == unix.AF_INET6 {
		return 6
	}
	return 4
}

func scopeName(s int) string {
	switch s {
	case unix.RT_SCOPE_UNIVERSE:
		return "global"
	case unix.RT_SCOPE_SITE:
		return "site"
	case unix.RT_SCOPE_LINK:
		return "link"
	case unix.RT_SCOPE_HOST:
		return "host"
	case unix.RT_SCOPE_NOWHERE:
		return "nowhere"
	}
	return strconv.Itoa(s)
}

func convertAddrs(addrs []netlink.Addr, names map[int]string) []facts.Address {
	out := make([]facts.Address, 0, len(addrs))
	for _, a := range addrs {
		if a.IPNet == nil {
			continue
		}
		fa := facts.Address{
			Link:      names[a.LinkIndex],
			CIDR:      a.IPNet.String(),
			Family:    familyOf(a.IP),
			Scope:     scopeName(a.Scope),
			Secondary: a.Flags&unix.IFA_F_SECONDARY != 0,
		}
		if a.Label != "" && a.Label != fa.Link {
			fa.Label = a.Label
		}
		out = append(out, fa)
	}
	return out
}

func routeTypeName(t int) string {
	switch t {
	case unix.RTN_UNICAST:
		return "unicast"
	case unix.RTN_LOCAL:
		return "local"
	case unix.RTN_BROADCAST:
		return "broadcast"
	case unix.RTN_ANYCAST:
		return "anycast"
	case unix.RTN_MULTICAST:
		return "multicast"
	case unix.RTN_BLACKHOLE:
		return "blackhole"
	case unix.RTN_UNREACHABLE:
		return "unreachable"
	case unix.RTN_PROHIBIT:
		return "prohibit"
	case unix.RTN_THROW:
		return "throw"
	case unix.RTN_NAT:
		return "nat"
	case unix.RTN_XRESOLVE:
		return "xresolve"
	}
	return strconv.Itoa(t)
}

// protocolNames are the rtnetlink route protocols of /etc/iproute2/rt_protos.
var protocolNames = map[int]string{
	0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 8: "gated", 9: "ra",
	10: "mrt", 11: "zebra", 12: "bird", 13: "dnrouted", 14: "xorp", 15: "ntk", 16: "dhcp",
	17: "mrouted", 18: "keepalived", 42: "babel", 99: "openr", 186: "bgp", 187: "isis",
	188: "ospf", 189: "rip", 192: "eigrp",
}

func protocolName(p int) string {
	if n, ok := protocolNames[p]; ok {
		return n
	}
	return strconv.Itoa(p)
}

func convertRoutes(routes []netlink.Route, names map[int]string) []facts.Route {
	out := make([]facts.Route, 0, len(routes))
	for _, r := range routes {
		if r.Family != unix.AF_INET && r.Family != unix.AF_INET6 {
			continue // multicast routing (ipmr) and MPLS tables
		}
		fr := facts.Route{
			Table:    r.Table,
			Type:     routeTypeName(r.Type),
			Link:     names[r.LinkIndex],
			Protocol: protocolName(int(r.Protocol)),
			Scope:    scopeName(int(r.Scope)),
			Metric:   r.Priority,
			OnLink:   r.Flags&unix.RTNH_F_ONLINK != 0,
			MTU:      r.MTU,
			Family:   familyNumber(r.Family),
		}
		if r.Dst == nil {
			fr.Dst = "default"
		} else {
			fr.Dst = r.Dst.String()
			if ones, _ := r.Dst.Mask.Size(); ones == 0 {
				fr.Dst = "default"
			}
		}
		if r.Gw != nil {
			fr.Gateway = r.Gw.String()
		}
		if r.Src != nil {
			fr.Src = r.Src.String()
		}
		for _, nh := range r.MultiPath {
			h := facts.NextHop{Link: names[nh.LinkIndex], Weight: nh.Hops + 1, OnLink: nh.Flags&unix.RTNH_F_ONLINK != 0}
			if nh.Gw != nil {
				h.Gateway = nh.Gw.String()
			}
			fr.NextHops = append(fr.NextHops, h)
		}
		out = append(out, fr)
	}
	return out
}

func ruleActionName(t uint8) string {
	switch t {
	case 0, unix.FR_ACT_TO_TBL:
		return "lookup"
	case unix.FR_ACT_GOTO:
		return "goto"
	case unix.FR_ACT_NOP:
		return "nop"
	case unix.FR_ACT_BLACKHOLE:
		return "blackhole"
	case unix.FR_ACT_UNREACHABLE:
		return "unreachable"
	case unix.FR_ACT_PROHIBIT:
		return "prohibit"
	}
	return strconv.Itoa(int(t))
}

func convertRules(rules []netlink.Rule) []facts.PolicyRule {
	out := make([]facts.PolicyRule, 0, len(rules))
	for _, r := range rules {
		fr := facts.PolicyRule{
			Priority: r.Priority,
			Table:    r.Table,
			Mark:     r.Mark,
			IifName:  r.IifName,
			OifName:  r.OifName,
			Family:   familyNumber(r.Family),
			Action:   ruleActionName(r.Type),
			Invert:   r.Invert,
		}
		if r.Mask != nil {
			fr.Mask = *r.Mask
		}
		if r.Src != nil {
			fr.Src = r.Src.String()
		}
		if r.Dst != nil {
			fr.Dst = r.Dst.String()
		}
		out = append(out, fr)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Family != out[j].Family {
			return out[i].Family < out[j].Family
		}
		return out[i].Priority < out[j].Priority
	})
	return out
}

// neighStateName spells a NUD_* state as ip neigh does.
func neighStateName(s int) string {
	var parts []string
	for _, n := range []struct {
		bit  int
		name string
	}{
		{unix.NUD_INCOMPLETE, "incomplete"}, {unix.NUD_REACHABLE, "reachable"}, {unix.NUD_STALE, "stale"},
		{unix.NUD_DELAY, "delay"}, {unix.NUD_PROBE, "probe"}, {unix.NUD_FAILED, "failed"},
		{unix.NUD_NOARP, "noarp"}, {unix.NUD_PERMANENT, "permanent"},
	} {
		if s&n.bit != 0 {
			parts = append(parts, n.name)
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ",")
}

func neighFlagNames(f int) []string {
	var out []string
	for _, n := range []struct {
		bit  int
		name string
	}{
		{unix.NTF_USE, "use"}, {unix.NTF_SELF, "self"}, {unix.NTF_MASTER, "master"},
		{unix.NTF_PROXY, "proxy"}, {unix.NTF_EXT_LEARNED, "extern_learn"}, {unix.NTF_OFFLOADED, "offload"},
		{unix.NTF_ROUTER, "router"},
	} {
		if f&n.bit != 0 {
			out = append(out, n.name)
		}
	}
	return out
}

func convertNeighbors(ns []netlink.Neigh, names map[int]string) []facts.Neighbor {
	out := make([]facts.Neighbor, 0, len(ns))
	for _, n := range ns {
		if n.IP == nil {
			continue
		}
		fn := facts.Neighbor{
			Link:   names[n.LinkIndex],
			IP:     n.IP.String(),
			State:  neighStateName(n.State),
			Family: familyNumber(n.Family),
			Flags:  neighFlagNames(n.Flags),
		}
		if len(n.HardwareAddr) > 0 {
			fn.MAC = n.HardwareAddr.String()
		}
		out = append(out, fn)
	}
	return out
}

// fdbStateName spells an FDB entry's state as bridge fdb does: permanent,
// static (NUD_NOARP), or the NUD state of a learned entry.
func fdbStateName(s int) string {
	switch {
	case s&unix.NUD_PERMANENT != 0:
		return "permanent"
	case s&unix.NUD_NOARP != 0:
		return "static"
	case s&unix.NUD_STALE != 0:
		return "stale"
	case s&unix.NUD_REACHABLE != 0:
		return "reachable"
	}
	return neighStateName(s)
}

func convertFDB(ns []netlink.Neigh, names map[int]string) []facts.FDBEntry {
	out := make([]facts.FDBEntry, 0, len(ns))
	for _, n := range ns {
		fe := facts.FDBEntry{
			Link:   names[n.LinkIndex],
			Master: names[n.MasterIndex],
			VLAN:   n.Vlan,
			State:  fdbStateName(n.State),
			Self:   n.Flags&unix.NTF_SELF != 0,
			VNI:    n.VNI,
		}
		if len(n.HardwareAddr) > 0 {
			fe.MAC = n.HardwareAddr.String()
		}
		if n.IP != nil && !n.IP.IsUnspecified() {
			fe.Dst = n.IP.String()
		}
		out = append(out, fe)
	}
	return out
}
