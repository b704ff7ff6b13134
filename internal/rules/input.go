package rules

import (
	"bufio"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"

	"github.com/netdoctor/netdoctor/internal/facts"
)

// FlannelSubnetEnv is the path of flannel's subnet file in NodeSnapshot.Files.
const FlannelSubnetEnv = "/run/flannel/subnet.env"

// Hints are cluster facts given by flags (or, later, by the cluster
// snapshot). Empty fields are learned from the node where possible.
type Hints struct {
	PodCIDRs     []netip.Prefix // pod CIDRs of nodes; the one holding a local address is this node's
	ClusterCIDRs []netip.Prefix // the whole pod network
	ServiceCIDRs []netip.Prefix // the Service ClusterIP range
	NodeIPs      []netip.Addr   // addresses the peers know this node by (flannel public-ip, InternalIP)
	PeerIPs      []netip.Addr   // underlay addresses of the other nodes
}

// Input is what a rule reads: one node snapshot, an optional earlier
// snapshot of the same node (for counters that must rise), and hints.
type Input struct {
	Node   *facts.NodeSnapshot
	Before *facts.NodeSnapshot
	Hints  Hints

	once sync.Once
	topo *Topology

	nfOnce sync.Once
	nf     *nfView
}

// NodeName is the snapshot's node name, or "node" when unknown.
func (in *Input) NodeName() string {
	if in == nil || in.Node == nil || in.Node.Node == "" {
		return "node"
	}
	return in.Node.Node
}

// Sourced is a prefix with where it was learned.
type Sourced struct {
	Prefix netip.Prefix
	Source string // "flag --pod-cidr", "/run/flannel/subnet.env FLANNEL_SUBNET=..."
}

// Peer is another node as seen from this node's overlay state.
type Peer struct {
	PodCIDR  netip.Prefix
	Gateway  netip.Addr // next hop on the overlay (flannel: the peer subnet's network address)
	Underlay netip.Addr // tunnel endpoint (FDB dst), if known
	Sources  []string   // evidence lines it was learned from
}

// Addr is an interface address parsed.
type Addr struct {
	Link      string
	Prefix    netip.Prefix // address with its mask
	Scope     string
	Secondary bool
}

// Topology is what the rules derive from the snapshot once: parsed addresses
// and routes, the pod bridge, the overlay, the uplink, the pod CIDRs.
type Topology struct {
	Links     map[string]*facts.Link
	Addrs     []Addr
	Main      []facts.Route // table main, parsed in order
	Overlay   *facts.Link   // vxlan/geneve/wireguard/ipip device carrying pod traffic
	Uplink    *facts.Link   // underlay device the overlay sends through
	PodBridge *facts.Link   // cni0 or the bridge holding pod veths
	PodVeths  []*facts.Link // veths enslaved to the pod bridge

	NodePodCIDRs []Sourced
	ClusterCIDRs []Sourced
	ServiceCIDRs []Sourced
	Peers        []Peer
	Flannel      map[string]string // subnet.env
	NodeIPs      []Sourced         // addresses the peers know this node by (as /32 prefixes)
}

// Topology returns the derived view of the snapshot (computed once).
func (in *Input) Topology() *Topology {
	in.once.Do(func() { in.topo = buildTopology(in.Node, in.Hints) })
	return in.topo
}

func buildTopology(s *facts.NodeSnapshot, h Hints) *Topology {
	t := &Topology{Links: map[string]*facts.Link{}, Flannel: map[string]string{}}
	if s == nil {
		return t
	}
	for i := range s.Links {
		l := &s.Links[i]
		t.Links[l.Name] = l
	}
	for _, a := range s.Addresses {
		p, err := netip.ParsePrefix(a.CIDR)
		if err != nil {
			continue
		}
		t.Addrs = append(t.Addrs, Addr{Link: a.Link, Prefix: p, Scope: a.Scope, Secondary: a.Secondary})
	}
	for _, r := range s.Routes {
		if r.Table == 254 || r.Table == 0 {
			t.Main = append(t.Main, r)
		}
	}
	if env, ok := s.Files[FlannelSubnetEnv]; ok {
		t.Flannel = parseEnv(env)
	}
	if f := s.Flannel; f != nil {
		for k, v := range map[string]string{"FLANNEL_NETWORK": f.Network, "FLANNEL_SUBNET": f.Subnet} {
			if v != "" {
				t.Flannel[k] = v
			}
		}
	}
	t.findOverlay()
	t.findPodBridge()
	t.learnCIDRs(s, h)
	t.learnPeers(s, h)
	t.findUplink(s)
	t.learnNodeIPs(s, h)
	return t
}

func parseEnv(s string) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if ok {
			m[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"'`)
		}
	}
	return m
}

// overlayTypes are link types that encapsulate pod traffic.
var overlayTypes = map[string]bool{"vxlan": true, "geneve": true, "wireguard": true, "ipip": true}

func (t *Topology) findOverlay() {
	var cands []*facts.Link
	for _, l := range t.Links {
		if overlayTypes[l.Type] {
			cands = append(cands, l)
		}
	}
	sort.Slice(cands, func(i, j int) bool {
		// Prefer flannel's devices, then the lowest index.
		fi, fj := strings.HasPrefix(cands[i].Name, "flannel"), strings.HasPrefix(cands[j].Name, "flannel")
		if fi != fj {
			return fi
		}
		return cands[i].Index < cands[j].Index
	})
	if len(cands) > 0 {
		t.Overlay = cands[0]
	}
}

func (t *Topology) findPodBridge() {
	var best *facts.Link
	bestPorts := -1
	for _, l := range t.Links {
		if l.Type != "bridge" {
			continue
		}
		ports := 0
		for _, p := range t.Links {
			if p.Master == l.Name && p.Type == "veth" {
				ports++
			}
		}
		score := ports
		if l.Name == "cni0" || l.Name == "cbr0" {
			score += 1000
		}
		if score > bestPorts || (score == bestPorts && best != nil && l.Name < best.Name) {
			best, bestPorts = l, score
		}
	}
	if best == nil || bestPorts == 0 {
		return
	}
	t.PodBridge = best
	for _, p := range t.Links {
		if p.Master == best.Name && p.Type == "veth" {
			t.PodVeths = append(t.PodVeths, p)
		}
	}
	sort.Slice(t.PodVeths, func(i, j int) bool { return t.PodVeths[i].Name < t.PodVeths[j].Name })
}

func (t *Topology) learnCIDRs(s *facts.NodeSnapshot, h Hints) {
	own := map[netip.Prefix]bool{}
	addOwn := func(p netip.Prefix, src string) {
		p = p.Masked()
		if !own[p] {
			own[p] = true
			t.NodePodCIDRs = append(t.NodePodCIDRs, Sourced{p, src})
		}
	}
	// Flags: a pod CIDR holding one of the pod bridge's (or any CNI) addresses is ours.
	for _, p := range h.PodCIDRs {
		if t.holdsCNIAddr(p) || len(h.PodCIDRs) == 1 {
			addOwn(p, "flag --pod-cidr "+p.String())
		}
	}
	if v := t.Flannel["FLANNEL_SUBNET"]; v != "" {
		if p, err := netip.ParsePrefix(v); err == nil {
			addOwn(p, FlannelSubnetEnv+" FLANNEL_SUBNET="+v)
		}
	}
	if t.PodBridge != nil {
		for _, a := range t.Addrs {
			if a.Link == t.PodBridge.Name && a.Prefix.Addr().Is4() && a.Scope != "host" && a.Prefix.Bits() < 32 {
				addOwn(a.Prefix, fmt.Sprintf("%s address %s", a.Link, a.Prefix))
			}
		}
	}
	for _, p := range h.ClusterCIDRs {
		t.ClusterCIDRs = append(t.ClusterCIDRs, Sourced{p.Masked(), "flag --cluster-cidr " + p.String()})
	}
	if len(t.ClusterCIDRs) == 0 {
		if v := t.Flannel["FLANNEL_NETWORK"]; v != "" {
			if p, err := netip.ParsePrefix(v); err == nil {
				t.ClusterCIDRs = append(t.ClusterCIDRs, Sourced{p.Masked(), FlannelSubnetEnv + " FLANNEL_NETWORK=" + v})
			}
		}
	}
	for _, p := range h.ServiceCIDRs {
		t.ServiceCIDRs = append(t.ServiceCIDRs, Sourced{p.Masked(), "flag --service-cidr " + p.String()})
	}
}

func (t *Topology) holdsCNIAddr(p netip.Prefix) bool {
	for _, a := range t.Addrs {
		if t.IsCNILink(a.Link) && p.Contains(a.Prefix.Addr()) {
			return true
		}
	}
	return false
}

// podPrefixLen is the prefix length of a node's pod CIDR (flannel gives every
// node the same), used to turn a peer's overlay neighbour into its CIDR.
func (t *Topology) podPrefixLen() int {
	for _, s := range t.NodePodCIDRs {
		if s.Prefix.Addr().Is4() {
			return s.Prefix.Bits()
		}
	}
	return 24
}

func (t *Topology) learnPeers(s *facts.NodeSnapshot, h Hints) {
	byCIDR := map[netip.Prefix]*Peer{}
	var order []netip.Prefix
	get := func(p netip.Prefix) *Peer {
		p = p.Masked()
		if pe, ok := byCIDR[p]; ok {
			return pe
		}
		byCIDR[p] = &Peer{PodCIDR: p}
		order = append(order, p)
		return byCIDR[p]
	}
	isOwn := func(p netip.Prefix) bool {
		for _, o := range t.NodePodCIDRs {
			if o.Prefix.Overlaps(p) {
				return true
			}
		}
		return false
	}
	if t.Overlay != nil {
		// Routes via the overlay device.
		for _, r := range t.Main {
			if r.Link != t.Overlay.Name || r.Dst == "default" {
				continue
			}
			p, err := netip.ParsePrefix(r.Dst)
			if err != nil || isOwn(p) || !p.Addr().Is4() {
				continue
			}
			pe := get(p)
			if gw, err := netip.ParseAddr(r.Gateway); err == nil {
				pe.Gateway = gw
			}
			pe.Sources = append(pe.Sources, "route: "+FormatRoute(r))
		}
		// Overlay neighbours (flannel: the peer subnet's network address).
		bits := t.podPrefixLen()
		for _, n := range s.Neighbors {
			if n.Link != t.Overlay.Name {
				continue
			}
			a, err := netip.ParseAddr(n.IP)
			if err != nil || !a.Is4() {
				continue
			}
			p := netip.PrefixFrom(a, bits).Masked()
			if isOwn(p) {
				continue
			}
			if existing := t.peerContaining(byCIDR, a); existing != nil {
				if !existing.Gateway.IsValid() || a == existing.PodCIDR.Addr() {
					// flannel's neighbour for a peer is its subnet's network
					// address: that, not a route's gateway, is the peer.
					existing.Gateway = a
				}
				existing.Sources = append(existing.Sources, "neighbour: "+FormatNeighbor(n))
				continue
			}
			if p.Addr() != a {
				continue // not flannel's network-address convention: cannot infer the CIDR
			}
			pe := get(p)
			pe.Gateway = a
			pe.Sources = append(pe.Sources, "neighbour: "+FormatNeighbor(n))
		}
		// FDB: MAC -> underlay, joined through the neighbour's MAC.
		macOf := map[netip.Addr]string{}
		for _, n := range s.Neighbors {
			if n.Link == t.Overlay.Name {
				if a, err := netip.ParseAddr(n.IP); err == nil {
					macOf[a] = strings.ToLower(n.MAC)
				}
			}
		}
		for _, p := range order {
			pe := byCIDR[p]
			mac := macOf[pe.Gateway]
			if mac == "" {
				continue
			}
			for _, f := range s.FDB {
				if f.Link == t.Overlay.Name && strings.EqualFold(f.MAC, mac) && f.Dst != "" {
					if d, err := netip.ParseAddr(f.Dst); err == nil {
						pe.Underlay = d
						pe.Sources = append(pe.Sources, "fdb: "+FormatFDB(f))
					}
				}
			}
		}
	}
	for _, p := range h.PodCIDRs {
		if isOwn(p) {
			continue
		}
		pe := get(p)
		pe.Sources = append(pe.Sources, "flag --pod-cidr "+p.String())
	}
	for _, p := range order {
		t.Peers = append(t.Peers, *byCIDR[p])
	}
}

func (t *Topology) peerContaining(m map[netip.Prefix]*Peer, a netip.Addr) *Peer {
	var best *Peer
	for p, pe := range m {
		if p.Contains(a) && (best == nil || p.Bits() > best.PodCIDR.Bits()) {
			best = pe
		}
	}
	return best
}

func (t *Topology) findUplink(s *facts.NodeSnapshot) {
	if t.Overlay != nil && t.Overlay.VXLAN != nil && t.Overlay.VXLAN.Device != "" {
		t.Uplink = t.Links[t.Overlay.VXLAN.Device]
		if t.Uplink != nil {
			return
		}
	}
	// The device of the route to a peer's underlay address.
	for _, pe := range t.Peers {
		if pe.Underlay.IsValid() {
			if r, ok := t.Lookup(pe.Underlay); ok && r.Link != "" && (t.Overlay == nil || r.Link != t.Overlay.Name) {
				t.Uplink = t.Links[r.Link]
				if t.Uplink != nil {
					return
				}
			}
		}
	}
	// The tunnel's local address.
	if t.Overlay != nil && t.Overlay.VXLAN != nil && t.Overlay.VXLAN.Local != "" {
		for _, a := range t.Addrs {
			if a.Prefix.Addr().String() == t.Overlay.VXLAN.Local {
				t.Uplink = t.Links[a.Link]
				return
			}
		}
	}
	// The default route's device.
	for _, r := range t.Main {
		if r.Dst == "default" && r.Family != 6 && r.Link != "" {
			t.Uplink = t.Links[r.Link]
			return
		}
	}
	// The one interface with a global address outside the pod network.
	if ups := t.Uplinks(); len(ups) == 1 {
		t.Uplink = ups[0]
	}
}

func (t *Topology) learnNodeIPs(s *facts.NodeSnapshot, h Hints) {
	for _, a := range h.NodeIPs {
		t.NodeIPs = append(t.NodeIPs, Sourced{netip.PrefixFrom(a, a.BitLen()), "hint node IP " + a.String()})
	}
	if v := t.Flannel["FLANNEL_PUBLIC_IP"]; v != "" {
		if a, err := netip.ParseAddr(v); err == nil {
			t.NodeIPs = append(t.NodeIPs, Sourced{netip.PrefixFrom(a, a.BitLen()), FlannelSubnetEnv + " FLANNEL_PUBLIC_IP=" + v})
		}
	}
	for _, p := range s.Processes {
		if !strings.Contains(p.Name, "flanneld") {
			continue
		}
		if v, ok := FlagValue(p.Cmdline, "public-ip"); ok {
			if a, err := netip.ParseAddr(v); err == nil {
				t.NodeIPs = append(t.NodeIPs, Sourced{netip.PrefixFrom(a, a.BitLen()), fmt.Sprintf("flanneld (pid %d) --public-ip=%s", p.PID, v)})
			}
		}
	}
}

// FlagValue finds --name=value or --name value (or -name) in a command line.
func FlagValue(cmdline []string, name string) (string, bool) {
	for i, a := range cmdline {
		for _, pre := range []string{"--", "-"} {
			if a == pre+name && i+1 < len(cmdline) {
				return cmdline[i+1], true
			}
			if strings.HasPrefix(a, pre+name+"=") {
				return strings.TrimPrefix(a, pre+name+"="), true
			}
		}
	}
	return "", false
}

// cniPrefixes are link-name prefixes that belong to CNI plugins.
var cniPrefixes = []string{"cni", "cbr0", "flannel", "cali", "cilium_", "lxc", "vxlan.calico", "tunl0", "weave", "kube-bridge", "kube-ipvs0", "genev_sys", "nodelocaldns", "vxlan-v6.calico", "antrea", "ovn"}

// IsCNILink reports whether a link belongs to the pod network: the pod
// bridge, its veths, the overlay device, or a name CNI plugins use.
func (t *Topology) IsCNILink(name string) bool {
	if t.PodBridge != nil && name == t.PodBridge.Name {
		return true
	}
	if t.Overlay != nil && name == t.Overlay.Name {
		return true
	}
	if l := t.Links[name]; l != nil {
		if t.PodBridge != nil && l.Master == t.PodBridge.Name {
			return true
		}
		if overlayTypes[l.Type] && l != t.Uplink {
			return true
		}
	}
	for _, p := range cniPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// PodNetworks are the CIDRs pods live in: the cluster CIDRs if known, else
// the node's and the peers' pod CIDRs.
func (t *Topology) PodNetworks() []Sourced {
	if len(t.ClusterCIDRs) > 0 {
		return t.ClusterCIDRs
	}
	out := append([]Sourced(nil), t.NodePodCIDRs...)
	for _, pe := range t.Peers {
		src := "peer pod CIDR"
		if len(pe.Sources) > 0 {
			src = pe.Sources[0]
		}
		out = append(out, Sourced{pe.PodCIDR, src})
	}
	return out
}

// Lookup finds the main-table route the kernel would use for dst (longest
// prefix, then lowest metric). Policy routing is not applied.
func (t *Topology) Lookup(dst netip.Addr) (facts.Route, bool) {
	var best facts.Route
	bestBits, bestMetric, found := -1, 0, false
	for _, r := range t.Main {
		var p netip.Prefix
		if r.Dst == "default" {
			if (r.Family == 6) != dst.Is6() {
				continue
			}
			p = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			if dst.Is6() {
				p = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			}
		} else {
			var err error
			if p, err = ParsePrefixOrAddr(r.Dst); err != nil {
				continue
			}
		}
		if !p.Contains(dst) {
			continue
		}
		if p.Bits() > bestBits || (p.Bits() == bestBits && r.Metric < bestMetric) {
			best, bestBits, bestMetric, found = r, p.Bits(), r.Metric, true
		}
	}
	return best, found
}

// LocalAddr reports whether a is assigned to an interface of the node.
func (t *Topology) LocalAddr(a netip.Addr) (Addr, bool) {
	for _, x := range t.Addrs {
		if x.Prefix.Addr() == a {
			return x, true
		}
	}
	return Addr{}, false
}

// GlobalV4 returns the global IPv4 addresses of a link, primary first.
func (t *Topology) GlobalV4(link string) []Addr {
	var out []Addr
	for _, a := range t.Addrs {
		if a.Link == link && a.Prefix.Addr().Is4() && (a.Scope == "" || a.Scope == "global" || a.Scope == "universe") {
			out = append(out, a)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return !out[i].Secondary && out[j].Secondary })
	return out
}

// ParsePrefixOrAddr parses "10.0.0.0/8" or a bare address (as a host prefix).
func ParsePrefixOrAddr(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		return netip.ParsePrefix(s)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// Uplinks are the non-CNI, non-loopback links that are up and hold a global
// IPv4 address, sorted by name.
func (t *Topology) Uplinks() []*facts.Link {
	var out []*facts.Link
	for _, l := range t.Links {
		// docker0 is a host network (its overlap with pods is a fault worth
		// reporting) but not a way in or out of the node.
		if l.Name == "lo" || l.Name == "docker0" || t.IsCNILink(l.Name) || !l.Up {
			continue
		}
		if len(t.GlobalV4(l.Name)) > 0 {
			out = append(out, l)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
