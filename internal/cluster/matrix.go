package cluster

import (
	"fmt"
	"io"
	"sort"
	"strings"
)

// Probe kinds: the columns of the connectivity matrix (seed 000's table).
const (
	KindPodICMP     = "pod-icmp"     // ICMP echo to a pod on a peer node
	KindPodTCP      = "pod-tcp"      // TCP connect to a pod on a peer node
	KindClusterIP   = "clusterip"    // TCP connect to a ClusterIP Service
	KindDNSShort    = "dns-short"    // same-namespace short name
	KindDNSNS       = "dns-ns"       // other namespace, svc.ns
	KindDNSFQDN     = "dns-fqdn"     // fully qualified cluster name
	KindDNSExternal = "dns-external" // a name outside the cluster
	KindMTU         = "mtu-df"       // ICMP echo with DF set at the pod MTU to a peer's pod
	KindOverlay     = "overlay-udp"  // a UDP datagram to the peer's overlay port
	// KindEndpoint probes the endpoints of Services on the agent's own node
	// (TCP connect to pod IP:targetPort); not a matrix column, feeds
	// endpoint-not-listening.
	KindEndpoint = "endpoint"
	// KindDNSUpstream asks an upstream DNS server (a target of the Corefile's
	// forward line, or one the operator names) for the external name
	// directly from the node; not a matrix column, feeds dns-upstream-failed.
	KindDNSUpstream = "dns-upstream"
)

// Columns is the order of the matrix columns.
var Columns = []string{KindPodICMP, KindPodTCP, KindClusterIP, KindDNSShort, KindDNSNS, KindDNSFQDN, KindDNSExternal, KindMTU, KindOverlay}

// Network namespaces a probe runs from.
const (
	FromHost = "host"
	FromPod  = "pod"
)

// DefaultPeers is the default number of peers each node probes (k).
const DefaultPeers = 10

// ProbeSpec is the input of the probe plan, carried in a request: one
// target per node plus the cluster-wide targets. Its size grows with the
// node count only; every agent derives its own probes from it with Plan.
type ProbeSpec struct {
	Seed        int64        `json:"seed"`
	K           int          `json:"k"`
	Targets     []NodeTarget `json:"targets"` // sorted by node
	ClusterIP   string       `json:"clusterIP,omitempty"`
	ClusterName string       `json:"clusterName,omitempty"` // ns/name of that Service
	DNSServer   string       `json:"dnsServer,omitempty"`   // cluster DNS Service IP
	DNS         []DNSQuery   `json:"dns,omitempty"`
	// Upstreams are the DNS servers CoreDNS forwards external names to
	// (the Corefile's "forward ." targets, ip or ip:port); UpstreamRefs are
	// servers the operator says should answer them (--upstream). The agents
	// ask both for the external name directly, from the host netns.
	Upstreams    []string `json:"upstreams,omitempty"`
	UpstreamRefs []string `json:"upstreamRefs,omitempty"`
	// ResolvPods are the pods whose resolv.conf the agents read, with the
	// cluster domain they are checked against (pod-resolv-conf-wrong).
	ResolvPods    []ResolvPod `json:"resolvPods,omitempty"`
	ClusterDomain string      `json:"clusterDomain,omitempty"`
	// UpstreamWhy says why no upstream is asked ("" = asked or not needed).
	UpstreamWhy string `json:"upstreamWhy,omitempty"`
	// PodMTU is the size of the DF probe packets; 0 = the MTU of the
	// probing namespace's interface toward the target (the agent reads it).
	PodMTU      int `json:"podMTU,omitempty"`
	OverlayPort int `json:"overlayPort,omitempty"`
	// Endpoints are Service endpoints to check for a listener, by node.
	Endpoints []EndpointTarget `json:"endpoints,omitempty"`
}

// NodeTarget is the probe target on one node: a running pod with a TCP port.
type NodeTarget struct {
	Node    string `json:"node"`
	NodeIP  string `json:"nodeIP,omitempty"`
	Pod     string `json:"pod,omitempty"` // ns/name
	PodIP   string `json:"podIP,omitempty"`
	PodPort int    `json:"podPort,omitempty"`
}

// DNSQuery is a name to resolve and the answer expected ("" = any answer).
type DNSQuery struct {
	Kind   string `json:"kind"` // dns-short, dns-ns, dns-fqdn, dns-external
	Name   string `json:"name"` // as the resolver sends it (search path applied)
	Shown  string `json:"shown"`
	Expect string `json:"expect,omitempty"`
}

// EndpointTarget is a Service endpoint on a node.
type EndpointTarget struct {
	Node    string `json:"node"`
	Service string `json:"svc"` // ns/name
	Pod     string `json:"pod,omitempty"`
	Addr    string `json:"addr"` // ip:port
}

// Probe is one planned probe.
type Probe struct {
	ID     string `json:"id"`
	From   string `json:"from"`  // node
	Netns  string `json:"netns"` // host or pod
	Kind   string `json:"kind"`
	Peer   string `json:"peer,omitempty"`   // peer node for peer probes
	Target string `json:"target"`           // ip, ip:port or DNS name
	Server string `json:"server,omitempty"` // DNS server
	Expect string `json:"expect,omitempty"`
	Size   int    `json:"size,omitempty"` // DF packet size (IP total length)
}

// Peers returns the k peers node probes in a cluster of nodes (sorted
// names), rotating with seed: node i probes the k nodes after it, starting
// at an offset that changes with the seed. Every node is probed by exactly
// min(k, n-1) peers, so the cost is N·k, not N².
func Peers(nodes []string, node string, k int, seed int64) []string {
	n := len(nodes)
	i := sort.SearchStrings(nodes, node)
	if n < 2 || i >= n || nodes[i] != node {
		return nil
	}
	if k <= 0 || k > n-1 {
		k = n - 1
	}
	others := int64(n - 1)
	off := ((seed*int64(k))%others + others) % others
	out := make([]string, 0, k)
	for j := 0; j < k; j++ {
		d := (off + int64(j)) % others
		out = append(out, nodes[(i+1+int(d))%n])
	}
	return out
}

// Plan returns the probes node runs for spec. It is a pure function: the CLI
// and the agents compute the same plan.
func Plan(spec *ProbeSpec, node string) []Probe {
	names := make([]string, 0, len(spec.Targets))
	byNode := map[string]NodeTarget{}
	for _, t := range spec.Targets {
		names = append(names, t.Node)
		byNode[t.Node] = t
	}
	sort.Strings(names)
	peers := Peers(names, node, spec.K, spec.Seed)
	var out []Probe
	add := func(p Probe) {
		p.From = node
		p.ID = p.Netns[:1] + ":" + p.Kind
		if p.Peer != "" {
			p.ID += ":" + p.Peer
		}
		out = append(out, p)
	}
	for _, ns := range []string{FromHost, FromPod} {
		for _, peer := range peers {
			t := byNode[peer]
			if t.PodIP != "" {
				add(Probe{Netns: ns, Kind: KindPodICMP, Peer: peer, Target: t.PodIP})
				if t.PodPort > 0 {
					add(Probe{Netns: ns, Kind: KindPodTCP, Peer: peer, Target: joinHostPort(t.PodIP, t.PodPort)})
				}
				add(Probe{Netns: ns, Kind: KindMTU, Peer: peer, Target: t.PodIP, Size: spec.PodMTU})
			}
			if ns == FromHost && t.NodeIP != "" && spec.OverlayPort > 0 {
				add(Probe{Netns: ns, Kind: KindOverlay, Peer: peer, Target: joinHostPort(t.NodeIP, spec.OverlayPort)})
			}
		}
		if spec.ClusterIP != "" {
			add(Probe{Netns: ns, Kind: KindClusterIP, Target: spec.ClusterIP})
		}
		for _, q := range spec.DNS {
			add(Probe{Netns: ns, Kind: q.Kind, Target: q.Name, Server: spec.DNSServer, Expect: q.Expect})
		}
	}
	for _, q := range spec.DNS {
		if q.Kind != KindDNSExternal {
			continue
		}
		for _, u := range UpstreamServers(spec) {
			out = append(out, Probe{ID: "h:" + KindDNSUpstream + ":" + u, From: node, Netns: FromHost, Kind: KindDNSUpstream, Target: q.Name, Server: u})
		}
	}
	for _, e := range spec.Endpoints {
		if e.Node == node {
			p := Probe{Netns: FromHost, Kind: KindEndpoint, Target: e.Addr, Peer: e.Service}
			p.From = node
			p.ID = "h:endpoint:" + e.Service + ":" + e.Addr
			out = append(out, p)
		}
	}
	return out
}

// UpstreamServers returns the spec's upstreams and reference upstreams,
// without duplicates, in that order.
func UpstreamServers(spec *ProbeSpec) []string {
	seen := map[string]bool{}
	var out []string
	for _, u := range append(append([]string{}, spec.Upstreams...), spec.UpstreamRefs...) {
		if !seen[u] {
			seen[u] = true
			out = append(out, u)
		}
	}
	return out
}

func joinHostPort(ip string, port int) string {
	if strings.Contains(ip, ":") {
		return fmt.Sprintf("[%s]:%d", ip, port)
	}
	return fmt.Sprintf("%s:%d", ip, port)
}

// Matrix is the connectivity table: one row per node and namespace, one
// column per probe kind.
type Matrix struct {
	Columns []string    `json:"columns"`
	Rows    []MatrixRow `json:"rows"`
}

// MatrixRow is one node's row (host or pod namespace).
type MatrixRow struct {
	Node  string          `json:"node"`
	Netns string          `json:"netns"`
	Cells map[string]Cell `json:"cells"`
}

// Cell aggregates the probes of one kind from one row.
type Cell struct {
	Status string `json:"status"` // ok, fail, partial, skipped, error, or "" (not probed)
	OK     int    `json:"ok"`
	Total  int    `json:"total"`
	// Failed lists the failing targets (peer node or name) with the reason.
	Failed []string `json:"failed,omitempty"`
	Detail string   `json:"detail,omitempty"` // a skip or error reason
	// Odd is true when the cell differs from the column's majority.
	Odd bool `json:"odd,omitempty"`
}

// BuildMatrix lays the probe results of every node out as the matrix.
// missing names nodes without a result (their cells are error).
func BuildMatrix(spec *ProbeSpec, results map[string]*AgentResult, missing map[string]string) *Matrix {
	m := &Matrix{Columns: Columns}
	nodes := make([]string, 0, len(spec.Targets))
	for _, t := range spec.Targets {
		nodes = append(nodes, t.Node)
	}
	sort.Strings(nodes)
	for _, node := range nodes {
		plan := Plan(spec, node)
		res := map[string]ProbeResult{}
		r := results[node]
		if r != nil {
			for _, p := range r.Probes {
				res[p.ID] = p
			}
		}
		for _, ns := range []string{FromHost, FromPod} {
			row := MatrixRow{Node: node, Netns: ns, Cells: map[string]Cell{}}
			for _, p := range plan {
				if p.Netns != ns || p.Kind == KindEndpoint || p.Kind == KindDNSUpstream {
					continue
				}
				c := row.Cells[p.Kind]
				c.Total++
				pr, ok := res[p.ID]
				switch {
				case r == nil:
					c.Status = ProbeError
					c.Detail = "no result from the agent"
					if why, ok := missing[node]; ok {
						c.Detail = why
					}
				case !ok:
					c.Failed = append(c.Failed, label(p)+": not run")
				case pr.Status == ProbeOK:
					c.OK++
				case pr.Status == ProbeSkipped:
					c.Detail = pr.Detail
				default:
					c.Failed = append(c.Failed, label(p)+": "+pr.Detail)
				}
				row.Cells[p.Kind] = c
			}
			for k, c := range row.Cells {
				if c.Status != ProbeError {
					c.Status = cellStatus(c)
				}
				row.Cells[k] = c
			}
			m.Rows = append(m.Rows, row)
		}
	}
	markOdd(m)
	return m
}

func label(p Probe) string {
	if p.Peer != "" {
		return p.Peer
	}
	return p.Target
}

func cellStatus(c Cell) string {
	failed := len(c.Failed)
	switch {
	case c.OK == c.Total:
		return ProbeOK
	case failed == 0:
		return ProbeSkipped
	case c.OK == 0:
		return ProbeFail
	}
	return "partial"
}

// markOdd flags, per column, the cells whose status differs from the status
// most rows have.
func markOdd(m *Matrix) {
	for _, col := range m.Columns {
		count := map[string]int{}
		for _, r := range m.Rows {
			if c, ok := r.Cells[col]; ok && c.Status != ProbeSkipped {
				count[c.Status]++
			}
		}
		major, best := "", 0
		for s, n := range count {
			if n > best || (n == best && s < major) {
				major, best = s, n
			}
		}
		for i, r := range m.Rows {
			c, ok := r.Cells[col]
			if !ok || c.Status == ProbeSkipped {
				continue
			}
			c.Odd = c.Status != major
			m.Rows[i].Cells[col] = c
		}
	}
}

// Render writes the matrix as a text table; odd cells are marked with "!"
// (and shown in red when color is true).
func (m *Matrix) Render(w io.Writer, color bool) error {
	if m == nil || len(m.Rows) == 0 {
		_, err := fmt.Fprintln(w, "connectivity matrix: no probes ran")
		return err
	}
	nodeW := len("node")
	for _, r := range m.Rows {
		if l := len(r.Node) + len(r.Netns) + 3; l > nodeW {
			nodeW = l
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%-*s", nodeW, "node (netns)")
	for _, c := range m.Columns {
		fmt.Fprintf(&b, "  %-12s", c)
	}
	b.WriteString("\n")
	var notes []string
	for _, r := range m.Rows {
		fmt.Fprintf(&b, "%-*s", nodeW, r.Node+" ("+r.Netns+")")
		for _, col := range m.Columns {
			c, ok := r.Cells[col]
			txt := "-"
			if ok {
				txt = cellText(c)
			}
			pad := fmt.Sprintf("  %-12s", txt)
			if c.Odd && color {
				pad = "  \x1b[31m" + fmt.Sprintf("%-12s", txt) + "\x1b[0m"
			}
			b.WriteString(pad)
			if ok && len(c.Failed) > 0 {
				notes = append(notes, fmt.Sprintf("  %s (%s) %s: %s", r.Node, r.Netns, col, strings.Join(c.Failed, "; ")))
			}
		}
		b.WriteString("\n")
	}
	if len(notes) > 0 {
		b.WriteString("failed probes:\n")
		for _, n := range notes {
			b.WriteString(n + "\n")
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func cellText(c Cell) string {
	mark := ""
	if c.Odd {
		mark = "!"
	}
	switch c.Status {
	case ProbeSkipped:
		return "skip"
	case ProbeError:
		return "error" + mark
	}
	if c.Total == 1 {
		if c.Status == ProbeOK {
			return "ok"
		}
		return "FAIL" + mark
	}
	s := fmt.Sprintf("%d/%d", c.OK, c.Total)
	if c.Status != ProbeOK {
		s += " FAIL"
	}
	return s + mark
}
