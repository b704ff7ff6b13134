package lab

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
)

// Default lab ranges: all inside 198.18.0.0/15 (RFC 2544 benchmarking), never the host's.
var (
	DefaultUnderlayCIDR = netip.MustParsePrefix("198.18.0.0/24")
	DefaultClusterCIDR  = netip.MustParsePrefix("198.18.128.0/17")
	DefaultServiceCIDR  = netip.MustParsePrefix("198.19.0.0/16")
)

// Fixed host numbers on the underlay.
const (
	hostGateway  = 1   // the hub bridge: nodes' default gateway (a dead end, never forwards)
	hostCP       = 2   // control plane
	hostNodeBase = 10  // node i (1-based) gets .10+i
	hostDNS      = 53  // upstream DNS server
	hostExt      = 100 // external host
	hostRoot     = 254 // the root namespace's one lab address
)

// Well-known names inside the lab.
const (
	// UplinkName is the underlay interface inside every lab namespace.
	UplinkName = "eth0"
	// BridgeName is the underlay bridge in the hub namespace.
	BridgeName = "br0"
	// ExtZone is the upstream DNS server's zone (never the internet).
	ExtZone = "ext.ndlab.test."
	// ExtHostName is a name of the external host in ExtZone.
	ExtHostName = "www.ext.ndlab.test."
	// DefaultName is the lab's name when none is given.
	DefaultName = "lab"
	// DefaultNodes is the node count when none is given.
	DefaultNodes = 3
	// PodMTU is the MTU of pod interfaces and flannel.1 (uplink 1500 minus VXLAN's 50).
	PodMTU = 1450
)

// Config is what `lab up` builds.
type Config struct {
	Name             string       `json:"name"`
	Nodes            int          `json:"nodes"`
	ProxyMode        string       `json:"proxyMode"` // iptables or nftables
	UnderlayCIDR     netip.Prefix `json:"underlayCIDR"`
	ClusterCIDR      netip.Prefix `json:"clusterCIDR"`
	ServiceCIDR      netip.Prefix `json:"serviceCIDR"`
	NodeCIDRMaskSize int          `json:"nodeCIDRMaskSize"`
	// StateRoot is the parent of every lab's state directory.
	StateRoot string `json:"stateRoot"`
	// K8sBin is the netdoctor-k8s multi-call binary; SelfBin is the netdoctor binary.
	K8sBin  string `json:"k8sBin"`
	SelfBin string `json:"selfBin"`
}

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,7}$`)

// DefaultStateRoot is where lab state lives unless NETDOCTOR_LAB_STATE says otherwise.
func DefaultStateRoot() string {
	if d := os.Getenv("NETDOCTOR_LAB_STATE"); d != "" {
		return d
	}
	return "/var/lib/netdoctor/lab"
}

// WithDefaults fills unset fields.
func (c Config) WithDefaults() Config {
	if c.Name == "" {
		c.Name = DefaultName
	}
	if c.Nodes == 0 {
		c.Nodes = DefaultNodes
	}
	if c.ProxyMode == "" {
		c.ProxyMode = "iptables"
	}
	if !c.UnderlayCIDR.IsValid() {
		c.UnderlayCIDR = DefaultUnderlayCIDR
	}
	if !c.ClusterCIDR.IsValid() {
		c.ClusterCIDR = DefaultClusterCIDR
	}
	if !c.ServiceCIDR.IsValid() {
		c.ServiceCIDR = DefaultServiceCIDR
	}
	if c.NodeCIDRMaskSize == 0 {
		c.NodeCIDRMaskSize = 24
	}
	if c.StateRoot == "" {
		c.StateRoot = DefaultStateRoot()
	}
	return c
}

// Validate checks a config (after WithDefaults): a usable name, node count, proxy mode, and
// ranges that are IPv4, canonical and disjoint from each other.
func (c Config) Validate() error {
	if !nameRE.MatchString(c.Name) {
		return fmt.Errorf("lab name %q: use 1-8 lowercase letters or digits, starting with a letter (it becomes part of link names, max 15 characters)", c.Name)
	}
	if c.Nodes < 1 || c.Nodes > 40 {
		return fmt.Errorf("node count %d: use 1 to 40", c.Nodes)
	}
	switch c.ProxyMode {
	case "iptables", "nftables":
	default:
		return fmt.Errorf("proxy mode %q: use iptables or nftables", c.ProxyMode)
	}
	ranges := c.Ranges()
	for _, r := range ranges {
		if !r.Prefix.Addr().Is4() {
			return fmt.Errorf("%s %s: only IPv4 is supported", r.Name, r.Prefix)
		}
		if r.Prefix != r.Prefix.Masked() {
			return fmt.Errorf("%s %s: not a network address (did you mean %s?)", r.Name, r.Prefix, r.Prefix.Masked())
		}
	}
	for i := range ranges {
		for j := i + 1; j < len(ranges); j++ {
			if ranges[i].Prefix.Overlaps(ranges[j].Prefix) {
				return fmt.Errorf("%s %s overlaps %s %s", ranges[i].Name, ranges[i].Prefix, ranges[j].Name, ranges[j].Prefix)
			}
		}
	}
	if c.UnderlayCIDR.Bits() > 24 {
		return fmt.Errorf("underlay %s: needs at least a /24", c.UnderlayCIDR)
	}
	if c.NodeCIDRMaskSize <= c.ClusterCIDR.Bits() || c.NodeCIDRMaskSize > 28 {
		return fmt.Errorf("node CIDR mask size /%d does not fit cluster CIDR %s", c.NodeCIDRMaskSize, c.ClusterCIDR)
	}
	return nil
}

// Range is one named lab range.
type Range struct {
	Name   string
	Prefix netip.Prefix
}

// Ranges lists the lab's address ranges.
func (c Config) Ranges() []Range {
	return []Range{
		{"underlay network", c.UnderlayCIDR},
		{"pod (cluster) CIDR", c.ClusterCIDR},
		{"service CIDR", c.ServiceCIDR},
	}
}

// StateDir is this lab's state directory.
func (c Config) StateDir() string { return filepath.Join(c.StateRoot, c.Name) }

// NetnsPrefix is the prefix of every namespace this lab owns.
func NetnsPrefix(name string) string { return "ndlab-" + name + "-" }

// RootLinkName is the one link the lab puts in the root namespace.
func RootLinkName(name string) string { return "ndl-" + name }

// Netns names of the lab's fixed namespaces.
func (c Config) HubNetns() string { return NetnsPrefix(c.Name) + "hub" }

// CPNetns is the control plane's namespace.
func (c Config) CPNetns() string { return NetnsPrefix(c.Name) + "cp" }

// ExtNetns is the external host's namespace.
func (c Config) ExtNetns() string { return NetnsPrefix(c.Name) + "ext" }

// DNSNetns is the upstream DNS server's namespace.
func (c Config) DNSNetns() string { return NetnsPrefix(c.Name) + "dns" }

// NodeName is the Kubernetes name of node i (1-based).
func NodeName(i int) string { return "node" + strconv.Itoa(i) }

// NodeNetns is the namespace of node i (1-based).
func (c Config) NodeNetns(i int) string { return NetnsPrefix(c.Name) + NodeName(i) }

// PodNetns is the namespace of a pod, from a short hash of its UID.
func PodNetns(labName, shortHash string) string { return NetnsPrefix(labName) + "p-" + shortHash }

func (c Config) underlayHost(n int) netip.Addr {
	a := c.UnderlayCIDR.Addr().As4()
	a[3] += byte(n)
	return netip.AddrFrom4(a)
}

// GatewayIP is the hub bridge's address.
func (c Config) GatewayIP() netip.Addr { return c.underlayHost(hostGateway) }

// CPIP is the control plane's (API server's) address.
func (c Config) CPIP() netip.Addr { return c.underlayHost(hostCP) }

// NodeIP is node i's underlay address (1-based).
func (c Config) NodeIP(i int) netip.Addr { return c.underlayHost(hostNodeBase + i) }

// DNSIP is the upstream DNS server's address.
func (c Config) DNSIP() netip.Addr { return c.underlayHost(hostDNS) }

// ExtIP is the external host's address.
func (c Config) ExtIP() netip.Addr { return c.underlayHost(hostExt) }

// RootIP is the root namespace's lab address.
func (c Config) RootIP() netip.Addr { return c.underlayHost(hostRoot) }

// ClusterDNSIP is the kube-dns Service's ClusterIP: the tenth address of the service CIDR.
func (c Config) ClusterDNSIP() netip.Addr {
	a := c.ServiceCIDR.Addr().As4()
	a[3] += 10
	return netip.AddrFrom4(a)
}
