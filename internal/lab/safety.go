package lab

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netdoctor/netdoctor/internal/namespace"
)

// HostNet is what the safety check reads of the host: its IPv4 addresses and routes.
type HostNet struct {
	Addrs  []HostAddr
	Routes []HostRoute
}

// HostAddr is one host address (ip -4 addr).
type HostAddr struct {
	Link   string
	Prefix netip.Prefix
}

// HostRoute is one host route of any table (ip -4 route show table all).
type HostRoute struct {
	Link  string
	Dst   netip.Prefix
	Table int
}

// ReadHostNet reads the IPv4 addresses and routes (all tables) of the network namespace at
// netnsPath ("" = the caller's, normally the root namespace). It only reads.
// Equivalent to: ip -4 addr; ip -4 route show table all.
func ReadHostNet(netnsPath string) (*HostNet, error) {
	var hn HostNet
	err := namespace.Do(netnsPath, func() error {
		h, err := netlink.NewHandle()
		if err != nil {
			return fmt.Errorf("open netlink: %w", err)
		}
		defer h.Close()
		links, err := h.LinkList()
		if err != nil {
			return fmt.Errorf("list links: %w", err)
		}
		names := map[int]string{}
		for _, l := range links {
			names[l.Attrs().Index] = l.Attrs().Name
		}
		addrs, err := h.AddrList(nil, netlink.FAMILY_V4)
		if err != nil {
			return fmt.Errorf("list addresses: %w", err)
		}
		for _, a := range addrs {
			p, ok := prefixOf(a.IPNet)
			if !ok {
				continue
			}
			hn.Addrs = append(hn.Addrs, HostAddr{Link: names[a.LinkIndex], Prefix: p})
		}
		routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			if r.Dst == nil {
				continue // default route: overlaps everything by definition, says nothing
			}
			p, ok := prefixOf(r.Dst)
			if !ok || p.Bits() == 0 {
				continue
			}
			hn.Routes = append(hn.Routes, HostRoute{Link: names[r.LinkIndex], Dst: p, Table: r.Table})
		}
		return nil
	})
	if err != nil {
		where := netnsPath
		if where == "" {
			where = "the current namespace"
		}
		return nil, fmt.Errorf("read host addresses and routes of %s: %w", where, err)
	}
	return &hn, nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	if !a.Is4() {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a, ones), true
}

// OverlapError names every host address or route that a lab range overlaps.
type OverlapError struct {
	Overlaps []string
}

func (e *OverlapError) Error() string {
	return "refusing to start the lab: its ranges overlap the host's network (" + strings.Join(e.Overlaps, "; ") +
		"); choose other ranges with --cluster-cidr/--service-cidr or remove the overlap"
}

// CheckOverlap compares the lab's ranges with the host's addresses and routes. Addresses and
// routes on ignoreLink (the lab's own root link, when re-checking a running lab) are skipped.
// It returns an *OverlapError naming each overlap, or nil.
func CheckOverlap(hn *HostNet, ranges []Range, ignoreLink string) error {
	var out []string
	seen := map[string]bool{}
	add := func(s string) {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	for _, r := range ranges {
		for _, a := range hn.Addrs {
			if a.Link == ignoreLink && ignoreLink != "" {
				continue
			}
			if r.Prefix.Overlaps(a.Prefix) {
				add(fmt.Sprintf("%s %s overlaps host address %s on %s", r.Name, r.Prefix, a.Prefix, a.Link))
			}
		}
		for _, rt := range hn.Routes {
			if rt.Link == ignoreLink && ignoreLink != "" {
				continue
			}
			if rt.Table == unix.RT_TABLE_LOCAL {
				continue // local/broadcast entries mirror the addresses already reported
			}
			if r.Prefix.Overlaps(rt.Dst) {
				add(fmt.Sprintf("%s %s overlaps host route %s dev %s (table %d)", r.Name, r.Prefix, rt.Dst, rt.Link, rt.Table))
			}
		}
	}
	if len(out) > 0 {
		return &OverlapError{Overlaps: out}
	}
	return nil
}

// CheckHost reads the host namespace at hostNetns ("" = the caller's) and refuses (returns an
// *OverlapError) if any of the config's ranges overlaps its addresses or routes.
func (c Config) CheckHost(hostNetns string) error {
	hn, err := ReadHostNet(hostNetns)
	if err != nil {
		return err
	}
	return CheckOverlap(hn, c.Ranges(), "")
}
