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
	Node        string    `json:"node"`                 // node name (hostname if not in a cluster)
	Netns       string    `json:"netns,omitempty"`      // namespace collected: name, path or pid:N; empty = current
	NetnsInode  uint64    `json:"netnsInode,omitempty"` // inode of the collected netns (as in /proc/PID/ns/net -> net:[INODE])
	CollectedAt time.Time `json:"collectedAt"`          // when collection started
	Kernel      string    `json:"kernel,omitempty"`     // uname -r

	Links     []Link       `json:"links"`
	Addresses []Address    `json:"addresses"`
	Routes    []Route      `json:"routes"`
	Rules     []PolicyRule `json:"rules"`
	Neighbors []Neighbor   `json:"neighbors"`
	FDB       []FDBEntry   `json:"fdb"`
	// Qdiscs are the queueing disciplines with their counters (tc -s qdisc
	// show): a full transmit queue shows as drops here.
	Qdiscs  []Qdisc           `json:"qdiscs,omitempty"`
	Sysctls map[string]string `json:"sysctls"` // key as "net.ipv4.ip_forward" (per interface: net.ipv4.conf.eth0.rp_filter); absent = not present on this kernel

	Conntrack *ConntrackStats `json:"conntrack,omitempty"`
	Softnet   []SoftnetStat   `json:"softnet,omitempty"`
	Sockets   []Socket        `json:"sockets"` // TCP LISTEN and ESTABLISHED, every UDP socket
	// SocketStats summarises every TCP socket (all states, TIME_WAIT
	// included) so that rules can reason about port use without a list of
	// every socket.
	SocketStats *SocketStats      `json:"socketStats,omitempty"`
	Netfilter   Netfilter         `json:"netfilter"`
	IPVS        *IPVS             `json:"ipvs,omitempty"`
	Processes   []Process         `json:"processes"`
	Files       map[string]string `json:"files,omitempty"` // small config files read verbatim, e.g. /run/flannel/subnet.env
	// Flannel is /run/flannel/subnet.env parsed, when present.
	Flannel *FlannelSubnet `json:"flannel,omitempty"`

	// Errors lists sections that could not be collected: key = section
	// ("netfilter.iptables-legacy", "sysctl net.bridge.bridge-nf-call-iptables"...),
	// value = the reason. Rules needing such a section report skipped.
	Errors map[string]string `json:"errors,omitempty"`
	// Skipped lists sections that do not exist on this system (no IPVS in the
	// kernel...): key = section, value = why. Not an error: there is nothing
	// to collect.
	Skipped map[string]string `json:"skipped,omitempty"`
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
	TxFifo    uint64 `json:"txFifoErrors"`
	TxCarrier uint64 `json:"txCarrierErrors"`
}

// VXLAN describes a VXLAN device (ip -d link show type vxlan).
type VXLAN struct {
	VNI         int    `json:"vni"`
	Local       string `json:"local,omitempty"`  // tunnel source address, if pinned
	Port        int    `json:"port"`             // destination UDP port
	Device      string `json:"device,omitempty"` // underlying device name
	DeviceIndex int    `json:"deviceIndex,omitempty"`
	Learning    bool   `json:"learning"`
	Group       string `json:"group,omitempty"` // remote or multicast group, if set
}

// Bridge describes a bridge device (ip -d link show type bridge).
type Bridge struct {
	VlanFiltering bool `json:"vlanFiltering"`
}

// Link is a network interface (ip -d link show).
type Link struct {
	Index       int    `json:"index"`
	Name        string `json:"name"`
	Type        string `json:"type"` // veth, bridge, vxlan, device, geneve, wireguard, ipip...
	MTU         int    `json:"mtu"`
	State       string `json:"state"` // up, down, unknown, lowerlayerdown...
	Up          bool   `json:"up"`    // IFF_UP set
	MAC         string `json:"mac,omitempty"`
	Master      string `json:"master,omitempty"` // bridge it is enslaved to
	MasterIndex int    `json:"masterIndex,omitempty"`
	PeerIndex   int    `json:"peerIndex,omitempty"` // veth peer ifindex (in its own netns)
	// PeerNetnsID is, for a veth, -1 when the peer is in this namespace, else
	// the netnsid of the peer's namespace (0 is a valid id, so the field is
	// always written); -1 for links without a peer.
	PeerNetnsID int `json:"peerNetnsId"`
	// Flags are the interface flags in lower case as ip link shows them:
	// up, broadcast, loopback, pointopoint, multicast, running, lower_up...
	Flags  []string   `json:"flags,omitempty"`
	Parent int        `json:"parentIndex,omitempty"` // IFLA_LINK: veth peer, vlan/macvlan lower device
	VXLAN  *VXLAN     `json:"vxlan,omitempty"`
	Bridge *Bridge    `json:"bridge,omitempty"`
	Stats  *LinkStats `json:"stats,omitempty"`
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
	// NextHops are the paths of a multipath route (ip route ... nexthop via A dev X nexthop via B dev Y).
	NextHops []NextHop `json:"nexthops,omitempty"`
}

// NextHop is one path of a multipath route.
type NextHop struct {
	Gateway string `json:"gateway,omitempty"`
	Link    string `json:"link,omitempty"`
	Weight  int    `json:"weight,omitempty"` // ip route's weight (hops + 1)
	OnLink  bool   `json:"onlink,omitempty"`
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
	Action   string `json:"action,omitempty"` // lookup (default), goto, nop, blackhole, unreachable, prohibit
	Invert   bool   `json:"invert,omitempty"` // "not" rule
}

// Neighbor is an ARP/NDP entry (ip neigh).
type Neighbor struct {
	Link  string `json:"link"`
	IP    string `json:"ip"`
	MAC   string `json:"mac,omitempty"`
	State string `json:"state"` // permanent, reachable, stale, failed, incomplete, noarp...
	// Family is 4 or 6.
	Family int `json:"family,omitempty"`
	// Flags are NTF_* flags: router, proxy, extern_learn...
	Flags []string `json:"flags,omitempty"`
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
	VNI    int    `json:"vni,omitempty"` // VXLAN VNI of the entry when set per entry
}

// Qdisc is one queueing discipline of an interface (tc -s qdisc show).
type Qdisc struct {
	Link       string `json:"link"`
	Kind       string `json:"kind"`   // fq_codel, pfifo_fast, mq, noqueue, htb...
	Handle     string `json:"handle"` // "1:" (major:minor, hex, as tc prints it)
	Parent     string `json:"parent"` // "root", "ingress" or a class "1:2"
	Packets    uint64 `json:"packets"`
	Bytes      uint64 `json:"bytes"`
	Drops      uint64 `json:"drops"`
	Overlimits uint64 `json:"overlimits"`
	Requeues   uint64 `json:"requeues"`
	Backlog    uint64 `json:"backlog"` // bytes queued when read
	Qlen       uint64 `json:"qlen"`    // packets queued when read
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
	Entries       uint64 `json:"entries,omitempty"` // per-CPU view of the table size (first column)
	New           uint64 `json:"new,omitempty"`
	Ignore        uint64 `json:"ignore,omitempty"`
	Delete        uint64 `json:"delete,omitempty"`
	ExpectNew     uint64 `json:"expectNew,omitempty"`
	ExpectCreate  uint64 `json:"expectCreate,omitempty"`
	ExpectDelete  uint64 `json:"expectDelete,omitempty"`
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
	// ReceivedRPS is the number of times this CPU was woken to process packets steered to it (RPS).
	ReceivedRPS uint64 `json:"receivedRps,omitempty"`
	// FlowLimit is the number of times the flow limit was hit.
	FlowLimit uint64 `json:"flowLimitCount,omitempty"`
	// BacklogLen is the packets queued in the backlog when read (kernel 5.10+).
	BacklogLen uint64 `json:"backlogLen,omitempty"`
}

// SocketStats summarises the TCP sockets of the namespace.
type SocketStats struct {
	// ByState counts sockets per protocol and state, e.g. "tcp TIME_WAIT": 1200.
	ByState map[string]int `json:"byState"`
	// PerDestination counts connected TCP sockets (every state but LISTEN)
	// per (local address, remote address:port), largest first, at most 100
	// entries. Each one holds a local port of ip_local_port_range.
	PerDestination []DestinationCount `json:"perDestination,omitempty"`
}

// DestinationCount is the number of TCP sockets from one local address to
// one remote address and port.
type DestinationCount struct {
	Proto   string `json:"proto"`   // tcp or tcp6
	LocalIP string `json:"localIp"` // source address
	Remote  string `json:"remote"`  // ip:port
	Count   int    `json:"count"`
}

// FlannelSubnet is flannel's /run/flannel/subnet.env.
type FlannelSubnet struct {
	Network     string `json:"network,omitempty"`     // FLANNEL_NETWORK: the cluster pod CIDR
	Subnet      string `json:"subnet,omitempty"`      // FLANNEL_SUBNET: this node's pod subnet (gateway address/prefix)
	MTU         int    `json:"mtu,omitempty"`         // FLANNEL_MTU
	IPMasq      bool   `json:"ipMasq"`                // FLANNEL_IPMASQ
	IPv6Network string `json:"ipv6Network,omitempty"` // FLANNEL_IPV6_NETWORK
	IPv6Subnet  string `json:"ipv6Subnet,omitempty"`  // FLANNEL_IPV6_SUBNET
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
	// Backend says which iptables backend holds rules: "legacy", "nft",
	// "both" (a classic source of confusion) or "none"; empty when no
	// iptables dump could be taken.
	Backend string `json:"backend,omitempty"`
	// NftWrittenTables lists iptables-nft tables ("ip filter") that hold
	// rules written with nft, which iptables-nft-save prints wrongly; when
	// NftJSON holds such a table, it is the one to trust.
	NftWrittenTables []string `json:"nftWrittenTables,omitempty"`
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
	Persistent   int               `json:"persistent,omitempty"` // persistence timeout in seconds (ipvsadm -p), 0 = none
	Netmask      string            `json:"netmask,omitempty"`    // persistence netmask (ipvsadm -M)
	Destinations []IPVSDestination `json:"destinations"`
}

// IPVSDestination is one IPVS real server.
type IPVSDestination struct {
	Address string `json:"address"`
	Port    int    `json:"port"`
	Weight  int    `json:"weight"`
	Forward string `json:"forward"` // masq, route, tunnel
	// UpperThreshold and LowerThreshold are ipvsadm's -x and -y (0 = none).
	UpperThreshold int `json:"upperThreshold,omitempty"`
	LowerThreshold int `json:"lowerThreshold,omitempty"`
}

// Process is a process of interest (kube-proxy, flanneld, kubelet...).
type Process struct {
	PID     int      `json:"pid"`
	Name    string   `json:"name"`
	Cmdline []string `json:"cmdline"`
	// Config holds config files the process names (kube-proxy --config), read verbatim.
	Config map[string]string `json:"config,omitempty"`
	// NetnsInode is the inode of the process's network namespace (0 if unreadable).
	NetnsInode uint64 `json:"netnsInode,omitempty"`
	// SameNetns is true when the process is in the collected namespace
	// (only then do its flags describe this namespace's datapath).
	SameNetns bool `json:"sameNetns"`
}
