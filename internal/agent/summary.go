package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	"github.com/netdoctor/netdoctor/internal/cluster"
	"github.com/netdoctor/netdoctor/internal/facts"
	"github.com/netdoctor/netdoctor/internal/netfilter"
)

// driftSysctls are the sysctls compared across nodes (per-interface ones
// for the uplink are added under the name "<uplink>").
var driftSysctls = []string{
	"net.ipv4.ip_forward",
	"net.bridge.bridge-nf-call-iptables",
	"net.bridge.bridge-nf-call-ip6tables",
	"net.ipv4.conf.all.rp_filter",
	"net.ipv4.conf.default.rp_filter",
	"net.netfilter.nf_conntrack_max",
	"net.ipv4.ip_local_port_range",
	"net.ipv4.conf.all.forwarding",
}

// roles turns node-specific addresses into their role, so that routes and
// rules compare across nodes.
type roles struct {
	own   []netip.Prefix // this node's pod CIDRs
	peers []netip.Prefix // other nodes' pod CIDRs
	ips   map[netip.Addr]string
}

func newRoles(node string, h Hints) *roles {
	r := &roles{ips: map[netip.Addr]string{}}
	for n, cidrs := range h.PodCIDRs {
		for _, c := range cidrs {
			p, err := netip.ParsePrefix(c)
			if err != nil {
				continue
			}
			if n == node {
				r.own = append(r.own, p.Masked())
			} else {
				r.peers = append(r.peers, p.Masked())
			}
		}
	}
	for n, ips := range h.NodeIPs {
		for _, ip := range ips {
			if a, err := netip.ParseAddr(ip); err == nil {
				if n == node {
					r.ips[a] = "<node-ip>"
				} else {
					r.ips[a] = "<peer-node-ip>"
				}
			}
		}
	}
	return r
}

var ipRe = regexp.MustCompile(`\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(/\d{1,2})?\b`)

// role names one address or prefix.
func (r *roles) role(s string) string {
	if p, err := netip.ParsePrefix(s); err == nil {
		p = p.Masked()
		for _, o := range r.own {
			if o == p {
				return "<own-pod-cidr>"
			}
		}
		for _, o := range r.peers {
			if o == p {
				return "<peer-pod-cidr>"
			}
		}
		return s
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return s
	}
	if v, ok := r.ips[a]; ok {
		return v
	}
	for _, o := range r.own {
		if o.Contains(a) {
			return "<own-pod-net>"
		}
	}
	for _, o := range r.peers {
		if o.Contains(a) {
			return "<peer-pod-net>"
		}
	}
	return s
}

func (r *roles) replace(text string) string {
	return ipRe.ReplaceAllStringFunc(text, r.role)
}

// Summarize reduces a node snapshot to the comparable NodeSummary.
func Summarize(node string, snap *facts.NodeSnapshot, h Hints) cluster.NodeSummary {
	r := newRoles(node, h)
	var s cluster.NodeSummary
	uplink := uplinkOf(snap)
	s.Sysctls = map[string]string{}
	for _, k := range driftSysctls {
		if v, ok := snap.Sysctls[k]; ok {
			s.Sysctls[k] = v
		}
	}
	if uplink != "" {
		for _, leaf := range []string{"rp_filter", "forwarding"} {
			if v, ok := snap.Sysctls["net.ipv4.conf."+uplink+"."+leaf]; ok {
				s.Sysctls["net.ipv4.conf.<uplink>."+leaf] = v
			}
		}
	}
	s.Routes = map[string]int{}
	for _, rt := range snap.Routes {
		if rt.Table != 254 || rt.Family == 6 {
			continue
		}
		var b strings.Builder
		b.WriteString(r.replace(rt.Dst))
		if rt.Gateway != "" {
			gw := r.role(rt.Gateway)
			if gw == rt.Gateway && rt.Dst == "default" {
				gw = "<gateway>"
			}
			b.WriteString(" via " + gw)
		}
		if rt.Link != "" {
			l := rt.Link
			if l == uplink {
				l = "<uplink>"
			}
			b.WriteString(" dev " + l)
		}
		if rt.Type != "" && rt.Type != "unicast" {
			b.WriteString(" type " + rt.Type)
		}
		if rt.OnLink {
			b.WriteString(" onlink")
		}
		if rt.Protocol == "kernel" && rt.Link == uplink {
			continue // the underlay subnet's own route: differs per underlay
		}
		s.Routes[b.String()]++
	}
	s.Netfilter = netfilterFingerprint(snap, r)
	for _, l := range snap.Links {
		if l.VXLAN != nil {
			s.Tunnels = append(s.Tunnels, cluster.Tunnel{Device: l.Name, Type: l.Type, Local: l.VXLAN.Local, Port: l.VXLAN.Port, VNI: l.VXLAN.VNI, MAC: strings.ToLower(l.MAC)})
		}
	}
	for _, a := range snap.Addresses {
		if a.Link == uplink && a.Family == 4 && a.Scope == "global" {
			s.UplinkAddresses = append(s.UplinkAddresses, a.CIDR)
		}
	}
	s.TunnelSource = tunnelSource(snap, s.Tunnels, uplink)
	tunnelDevs := map[string]bool{}
	for _, t := range s.Tunnels {
		tunnelDevs[t.Device] = true
	}
	for _, f := range snap.FDB {
		if tunnelDevs[f.Link] && f.Dst != "" && f.MAC != "00:00:00:00:00:00" {
			if s.FDB == nil {
				s.FDB = map[string]string{}
			}
			s.FDB[strings.ToLower(f.MAC)] = f.Dst
		}
	}
	for _, p := range snap.Processes {
		if p.Name == "kube-proxy" && p.SameNetns {
			s.KubeProxy = cluster.KubeProxyStateOf(p)
		}
	}
	if kp := s.KubeProxy; kp != nil && kp.Flags["cluster-cidr"] == "" {
		if v, from := masqueradeCIDR(snap); v != "" {
			kp.Flags["cluster-cidr"], kp.ClusterCIDRFrom = v, from
		}
	}
	return s
}

// masqueradeCIDR reads kube-proxy's clusterCIDR back from its iptables
// rules: with clusterCIDR set, each KUBE-SVC-* chain starts with
// "! -s CIDR ... -j KUBE-MARK-MASQ".
func masqueradeCIDR(snap *facts.NodeSnapshot) (string, string) {
	for _, text := range []string{snap.Netfilter.IptablesNft, snap.Netfilter.IptablesLegacy} {
		if !strings.Contains(text, "KUBE-MARK-MASQ") {
			continue
		}
		rs, err := netfilter.ParseIptablesSave([]byte(text))
		if err != nil {
			continue
		}
		nat := rs.Table("ip", "nat")
		if nat == nil {
			nat = rs.Table("", "nat")
		}
		if nat == nil {
			continue
		}
		for _, c := range nat.Chains {
			if !strings.HasPrefix(c.Name, "KUBE-SVC-") {
				continue
			}
			for _, r := range c.Rules {
				if r.Target != "KUBE-MARK-MASQ" {
					continue
				}
				for _, o := range r.Basic {
					if o.Name == "s" && o.Negated {
						return o.Value(), "iptables: " + r.Text
					}
				}
			}
		}
	}
	return "", ""
}

// uplinkOf is the device of the default route (or of the first global
// IPv4 address when there is none).
func uplinkOf(snap *facts.NodeSnapshot) string {
	for _, rt := range snap.Routes {
		if rt.Table == 254 && rt.Dst == "default" && rt.Link != "" && rt.Family != 6 {
			return rt.Link
		}
	}
	for _, a := range snap.Addresses {
		if a.Family == 4 && a.Scope == "global" && a.Link != "cni0" && !strings.HasPrefix(a.Link, "flannel") {
			return a.Link
		}
	}
	return ""
}

// tunnelSource is the address overlay packets leave with: the tunnel
// device's pinned local address, else the primary global address of the
// uplink (what the kernel picks for the outer header).
func tunnelSource(snap *facts.NodeSnapshot, tunnels []cluster.Tunnel, uplink string) string {
	if len(tunnels) == 0 {
		return ""
	}
	if tunnels[0].Local != "" {
		return tunnels[0].Local
	}
	for _, a := range snap.Addresses {
		if a.Link == uplink && a.Family == 4 && a.Scope == "global" && !a.Secondary {
			ip, _, _ := strings.Cut(a.CIDR, "/")
			return ip
		}
	}
	return ""
}

// netfilterFingerprint fingerprints the built-in chains of every iptables
// ruleset (policy, rule count, hash of the rules with node-specific
// addresses replaced by their role) and counts kube-proxy's service chains.
func netfilterFingerprint(snap *facts.NodeSnapshot, r *roles) map[string]string {
	out := map[string]string{}
	for _, src := range []struct{ name, text string }{{"iptables-legacy", snap.Netfilter.IptablesLegacy}, {"iptables-nft", snap.Netfilter.IptablesNft}} {
		if strings.TrimSpace(src.text) == "" {
			continue
		}
		rs, err := netfilter.ParseIptablesSave([]byte(src.text))
		if err != nil {
			continue
		}
		for _, t := range rs.Tables {
			for _, c := range t.Chains {
				if !c.Builtin {
					continue
				}
				h := sha256.New()
				for _, rule := range c.Rules {
					h.Write([]byte(r.replace(rule.Text) + "\n"))
				}
				out[fmt.Sprintf("%s %s/%s", src.name, t.Name, c.Name)] = fmt.Sprintf("policy %s, %d rules, %s", orDash(c.Policy), len(c.Rules), hex.EncodeToString(h.Sum(nil))[:8])
			}
		}
	}
	return out
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
