package rules

import (
	"fmt"
	"strings"

	"github.com/netdoctor/netdoctor/internal/facts"
)

// FormatRoute renders a route the way `ip route show` does.
func FormatRoute(r facts.Route) string {
	var b strings.Builder
	if r.Type != "" && r.Type != "unicast" {
		b.WriteString(r.Type + " ")
	}
	b.WriteString(r.Dst)
	if r.Gateway != "" {
		b.WriteString(" via " + r.Gateway)
	}
	if r.Link != "" {
		b.WriteString(" dev " + r.Link)
	}
	if r.Table != 0 && r.Table != 254 {
		fmt.Fprintf(&b, " table %d", r.Table)
	}
	if r.Protocol != "" && r.Protocol != "boot" {
		b.WriteString(" proto " + r.Protocol)
	}
	if r.Scope != "" && r.Scope != "global" && r.Scope != "universe" {
		b.WriteString(" scope " + r.Scope)
	}
	if r.Src != "" {
		b.WriteString(" src " + r.Src)
	}
	if r.Metric != 0 {
		fmt.Fprintf(&b, " metric %d", r.Metric)
	}
	if r.MTU != 0 {
		fmt.Fprintf(&b, " mtu %d", r.MTU)
	}
	if r.OnLink {
		b.WriteString(" onlink")
	}
	return b.String()
}

// FormatNeighbor renders a neighbour the way `ip neigh show` does.
func FormatNeighbor(n facts.Neighbor) string {
	s := n.IP + " dev " + n.Link
	if n.MAC != "" {
		s += " lladdr " + n.MAC
	}
	if n.State != "" {
		s += " " + strings.ToUpper(n.State)
	}
	return s
}

// FormatFDB renders an FDB entry the way `bridge fdb show` does.
func FormatFDB(f facts.FDBEntry) string {
	s := f.MAC + " dev " + f.Link
	if f.VLAN != 0 {
		s += fmt.Sprintf(" vlan %d", f.VLAN)
	}
	if f.Master != "" {
		s += " master " + f.Master
	}
	if f.Dst != "" {
		s += " dst " + f.Dst
	}
	if f.Self {
		s += " self"
	}
	if f.State != "" {
		s += " " + f.State
	}
	return s
}

// FormatLink renders a link's identity and MTU, e.g. "flannel.1 (vxlan id 1
// local 198.18.0.1 dev eth0 dstport 8472) mtu 1450".
func FormatLink(l *facts.Link) string {
	if l == nil {
		return "(none)"
	}
	kind := l.Type
	if l.VXLAN != nil {
		kind = fmt.Sprintf("vxlan id %d", l.VXLAN.VNI)
		if l.VXLAN.Local != "" {
			kind += " local " + l.VXLAN.Local
		}
		if l.VXLAN.Device != "" {
			kind += " dev " + l.VXLAN.Device
		}
		kind += fmt.Sprintf(" dstport %d", l.VXLAN.Port)
	}
	if l.Master != "" {
		kind += " master " + l.Master
	}
	return fmt.Sprintf("%s (%s) mtu %d", l.Name, kind, l.MTU)
}

// FormatPolicyRule renders a policy rule the way `ip rule show` does.
func FormatPolicyRule(r facts.PolicyRule) string {
	s := fmt.Sprintf("%d:", r.Priority)
	if r.Src != "" {
		s += " from " + r.Src
	} else {
		s += " from all"
	}
	if r.Dst != "" {
		s += " to " + r.Dst
	}
	if r.Mark != 0 {
		s += fmt.Sprintf(" fwmark %#x", r.Mark)
		if r.Mask != 0 && r.Mask != 0xffffffff {
			s += fmt.Sprintf("/%#x", r.Mask)
		}
	}
	if r.IifName != "" {
		s += " iif " + r.IifName
	}
	if r.OifName != "" {
		s += " oif " + r.OifName
	}
	return s + fmt.Sprintf(" lookup %d", r.Table)
}
