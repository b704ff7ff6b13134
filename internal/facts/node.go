// Package facts holds the plain, versioned, JSON-serialisable snapshots that
// collectors fill from live systems, fixtures fill in tests and bundles carry
// offline. Rules read facts only; they never touch the system.
package facts

import "time"

// NodeSnapshotVersion is the version of the NodeSnapshot layout.
const NodeSnapshotVersion = "netdoctor.node/v1"

// NodeSnapshot is everything netdoctor knows about one node (or one network
// namespace). Sections that could not be read are listed in Errors with the
// reason and left empty: partial facts are still facts.
type NodeSnapshot struct {
	Version     string    `json:"version"`
	Node        string    `json:"node"`             // node name (hostname if not in a cluster)
	Netns       string    `json:"netns,omitempty"`  // namespace collected: name, path or pid:N; empty = current
	CollectedAt time.Time `json:"collectedAt"`      // when collection started
	Kernel      string    `json:"kernel,omitempty"` // uname -r

	Links     []Link            `json:"links"`
	Addresses []Address         `json:"addresses"`
	Routes    []Route           `json:"routes"`
	Rules     []PolicyRule      `json:"rules"`
	Neighbors []Neighbor        `json:"neighbors"`
	FDB       []FDBEntry        `json:"fdb"`
	Sysctls   map[string]string `json:"sysctls"` // key as "net.ipv4.ip_forward" (per interface: net.ipv4.conf.eth0.rp_filter); absent = not present on this kernel

	Conntrack *ConntrackStats   `json:"conntrack,omitempty"`
	Softnet   []SoftnetStat     `json:"softnet,omitempty"`
	Sockets   []Socket          `json:"sockets"`
	Netfilter Netfilter         `json:"netfilter"`
	IPVS      *IPVS             `json:"ipvs,omitempty"`
	Processes []Process         `json:"processes"`
	Files     map[string]string `json:"files,omitempty"` // small config files read verbatim, e.g. /run/flannel/subnet.env

	// Errors lists sections that could not be collected: key = section
	// ("netfilter.iptables-legacy", "sysctl net.bridge.bridge-nf-call-iptables"...),
	// value = the reason. Rules needing such a section report skipped.
	Errors map[string]string `json:"errors,omitempty"`
}

// LinkStats are the interface counters (ip -s link).
type LinkStats struct {
	RxPackets uint64 `json:"rxPackets"`
	TxPackets uint64 `json:"txPackets"`
	RxBytes   uint64 `json:"rxBytes"`
	TxBytes   uint64 `json:"txBytes"`
	RxDropped uint64 `json:"rxDropped"`
	TxDropped uint64 `json:"txDropped"`
	RxErrors  uint64 `json:"rxErrors"`
	TxErrors  uint64 `json:"txErrors"`
	RxFifo    uint64 `json:"rxFifoErrors"`
	RxMissed  uint64 `json:"rxMissedErrors"`
}

// VXLAN describes a VXLAN device (ip -d link show type vxlan).
type VXLAN struct {
	VNI         int    `json:"vni"`
	Local       string `json:"local,omitempty"`  // tunnel source address, if pinned
	Port        int    `json:"port"`             // destination UDP port
	Device      string `json:"device,omitempty"` // underlying device name
	DeviceIndex int    `json:"deviceIndex,omitempty"`
	Learning    bool   `json:"learning"`
}

// Link is a network interface (ip -d link show).
type Link struct {
	Index       int        `json:"index"`
	Name        string     `json:"name"`
	Type        string     `json:"type"` // veth, bridge, vxlan, device, geneve, wireguard, ipip...
	MTU         int        `json:"mtu"`
	State       string     `json:"state"` // up, down, unknown, lowerlayerdown...
	Up          bool       `json:"up"`    // IFF_UP set
	MAC         string     `json:"mac,omitempty"`
	Master      string     `json:"master,omitempty"` // bridge it is enslaved to
	MasterIndex int        `json:"masterIndex,omitempty"`
	PeerIndex   int        `json:"peerIndex,omitempty"`   // veth peer ifindex (in its own netns)
	PeerNetnsID int        `json:"peerNetnsId,omitempty"` // -1 or the netnsid of the peer
	VXLAN       *VXLAN     `json:"vxlan,omitempty"`
	Stats       *LinkStats `json:"stats,omitempty"`
}

// Address is an interface address (ip addr).
type Address struct {
	Link      string `json:"link"`
	CIDR      string `json:"cidr"`   // 10.0.0.5/24
	Family    int    `json:"family"` // 4 or 6
	Scope     string `json:"scope"`  // global, link, host
	Secondary bool   `json:"secondary,omitempty"`
	Label     string `json:"label,omitempty"`
}

// Route is one route of any table (ip route show table all).
type Route struct {
	Table    int    `json:"table"` // 254 main, 255 local...
	Type     string `json:"type"`  // unicast, local, broadcast, blackhole, unreachable, prohibit
	Dst      string `json:"dst"`   // CIDR or "default"
	Gateway  string `json:"gateway,omitempty"`
	Link     string `json:"link,omitempty"`
	Src      string `json:"src,omitempty"`
	Protocol string `json:"protocol,omitempty"` // kernel, boot, static...
	Scope    string `json:"scope,omitempty"`
	Metric   int    `json:"metric,omitempty"`
	OnLink   bool   `json:"onlink,omitempty"`
	MTU      int    `json:"mtu,omitempty"`
	Family   int    `json:"family"`
}

// PolicyRule is one ip rule.
type PolicyRule struct {
	Priority int    `json:"priority"`
	Src      string `json:"src,omitempty"`
	Dst      string `json:"dst,omitempty"`
	Table    int    `json:"table"`
	Mark     uint32 `json:"mark,omitempty"`
	Mask     uint32 `json:"mask,omitempty"`
	IifName  string `json:"iif,omitempty"`
	OifName  string `json:"oif,omitempty"`
	Family   int    `json:"family"`
}

// Neighbor is an ARP/NDP entry (ip neigh).
type Neighbor struct {
	Link  string `json:"link"`
	IP    string `json:"ip"`
	MAC   string `json:"mac,omitempty"`
	State string `json:"state"` // permanent, reachable, stale, failed, incomplete, noarp...
}

// FDBEntry is a bridge forwarding database entry (bridge fdb show).
type FDBEntry struct {
	Link   string `json:"link"`
	MAC    string `json:"mac"`
	Dst    string `json:"dst,omitempty"` // VXLAN remote endpoint
	VLAN   int    `json:"vlan,omitempty"`
	Master string `json:"master,omitempty"`
	State  string `json:"state,omitempty"` // permanent, static, reachable...
	Self   bool   `json:"self,omitempty"`
}

// ConntrackStats are the conntrack table size and per-CPU statistics.
type ConntrackStats struct {
	Count  uint64             `json:"count"` // net.netfilter.nf_conntrack_count
	Max    uint64             `json:"max"`   // net.netfilter.nf_conntrack_max
	PerCPU []ConntrackCPUStat `json:"perCpu,omitempty"`
}

// ConntrackCPUStat mirrors one line of conntrack -S.
type ConntrackCPUStat struct {
	CPU           int    `json:"cpu"`
	Found         uint64 `json:"found"`
	Invalid       uint64 `json:"invalid"`
	Insert        uint64 `json:"insert"`
	InsertFailed  uint64 `json:"insertFailed"`
	Drop          uint64 `json:"drop"`
	EarlyDrop     uint64 `json:"earlyDrop"`
	Error         uint64 `json:"error"`
	SearchRestart uint64 `json:"searchRestart"`
	ClashResolve  uint64 `json:"clashResolve"`
	ChainTooLong  uint64 `json:"chainTooLong"`
}

// SoftnetStat is one CPU's line of /proc/net/softnet_stat.
type SoftnetStat struct {
	CPU       int    `json:"cpu"`
	Processed uint64 `json:"processed"`
	Dropped   uint64 `json:"dropped"`
	Squeezed  uint64 `json:"timeSqueeze"`
}

// Socket is a TCP/UDP socket (ss -tuna).
type Socket struct {
	Proto  string `json:"proto"` // tcp, udp, tcp6, udp6
	State  string `json:"state"` // LISTEN, ESTABLISHED, TIME_WAIT...
	Local  string `json:"local"` // ip:port
	Remote string `json:"remote,omitempty"`
	Inode  uint64 `json:"inode,omitempty"`
}

// Netfilter is the raw netfilter state; the netfilter package parses it.
type Netfilter struct {
	IptablesLegacy  string `json:"iptablesLegacy,omitempty"` // iptables-legacy-save output
	IptablesNft     string `json:"iptablesNft,omitempty"`    // iptables-nft-save output
	Ip6tablesLegacy string `json:"ip6tablesLegacy,omitempty"`
	Ip6tablesNft    string `json:"ip6tablesNft,omitempty"`
	NftJSON         string `json:"nftJson,omitempty"` // nft -j list ruleset
	Ipsets          string `json:"ipsets,omitempty"`  // ipset save
}

// IPVS is the IPVS table (ipvsadm -Sn) and kube-ipvs0's addresses.
type IPVS struct {
	Services          []IPVSService `json:"services"`
	KubeIPVSAddresses []string      `json:"kubeIpvsAddresses,omitempty"`
}

// IPVSService is one IPVS virtual server.
type IPVSService struct {
	Protocol     string            `json:"protocol"` // tcp, udp, sctp
	Address      string            `json:"address"`
	Port         int               `json:"port"`
	FWMark       uint32            `json:"fwmark,omitempty"`
	Scheduler    string            `json:"scheduler"`
	Destinations []IPVSDestination `json:"destinations"`
}

// IPVSDestination is one IPVS real server.
type IPVSDestination struct {
	Address string `json:"address"`
	Port    int    `json:"port"`
	Weight  int    `json:"weight"`
	Forward string `json:"forward"` // masq, route, tunnel
}

// Process is a process of interest (kube-proxy, flanneld, kubelet...).
type Process struct {
	PID     int      `json:"pid"`
	Name    string   `json:"name"`
	Cmdline []string `json:"cmdline"`
	// Config holds config files the process names (kube-proxy --config), read verbatim.
	Config map[string]string `json:"config,omitempty"`
}
