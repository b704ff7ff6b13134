package cluster

import (
	"crypto/sha256"
	"encoding/hex"
	"sort"
	"strings"
	"time"

	"github.com/netdoctor/netdoctor/internal/finding"
)

// AgentResultVersion is the version of the AgentResult layout.
const AgentResultVersion = "netdoctor.agent-result/v1"

// AgentResult is what the agent on one node sends back for one request:
// findings, fingerprints and probe results, never raw dumps, so that a big
// cluster's results stay small.
type AgentResult struct {
	Version    string    `json:"version"`
	Node       string    `json:"node"`
	Request    string    `json:"request"`
	StartedAt  time.Time `json:"startedAt"`
	FinishedAt time.Time `json:"finishedAt"`
	// Findings and Checks are the node rules' output for this node.
	Findings []finding.Finding `json:"findings,omitempty"`
	Checks   []finding.Check   `json:"checks,omitempty"`
	// Summary is the node's shape, compared across nodes (drift) and with
	// the API (overlay sources, kube-proxy).
	Summary NodeSummary `json:"summary"`
	// ServiceRules are the per-service-port fingerprints of the NAT rules
	// found on the node. Nil with ServiceRulesError set when they could not be
	// read.
	ServiceRules      []ServiceRule `json:"serviceRules,omitempty"`
	ServiceRulesMode  string        `json:"serviceRulesMode,omitempty"` // iptables, nftables, ipvs
	ServiceRulesError string        `json:"serviceRulesError,omitempty"`
	// ServiceRulesCompared says the agent compared the node's rules with its own read of the
	// API (after giving kube-proxy time to sync a difference); ServiceRulesDiffer are the
	// Service ports ("ns/name port/proto") that still differed then. A Service port the CLI's
	// later read of the API finds different but the agent did not changed while the check ran.
	ServiceRulesCompared bool          `json:"serviceRulesCompared,omitempty"`
	ServiceRulesDiffer   []string      `json:"serviceRulesDiffer,omitempty"`
	Probes               []ProbeResult `json:"probes,omitempty"`
	// PodResolv are the verdicts on the node's pods' resolv.conf.
	PodResolv []PodResolv `json:"podResolv,omitempty"`
	// Errors lists sections the agent could not produce, with the reason.
	Errors map[string]string `json:"errors,omitempty"`
}

// NodeSummary is the comparable shape of a node: what odd-node-out drift and
// the overlay rules read.
type NodeSummary struct {
	KubeProxy *KubeProxyState `json:"kubeProxy,omitempty"`
	// Sysctls are the networking sysctls that matter (ip_forward,
	// bridge-nf-call-iptables, rp_filter of the uplink, conntrack max...).
	Sysctls map[string]string `json:"sysctls,omitempty"`
	// Routes counts the main table's routes by shape: node-specific parts
	// replaced by their role ("<own-pod-cidr> dev cni0": 1,
	// "<peer-pod-cidr> via <peer-pod-net> dev flannel.1 onlink": 2).
	Routes map[string]int `json:"routes,omitempty"`
	// Netfilter maps "table/chain" to a fingerprint of its rules with
	// per-service hashes removed (kube-proxy's KUBE-SVC-XXXX become KUBE-SVC-*).
	Netfilter map[string]string `json:"netfilter,omitempty"`
	// Tunnels are the overlay devices (VXLAN...) with their local address.
	Tunnels []Tunnel `json:"tunnels,omitempty"`
	// TunnelSource is the address the node sends overlay packets from (the
	// device's local address if pinned, else the route source toward peers).
	TunnelSource string `json:"tunnelSource,omitempty"`
	// UplinkAddresses are the global IPv4 addresses of the uplink.
	UplinkAddresses []string `json:"uplinkAddresses,omitempty"`
	// FDB maps a peer VTEP MAC to the remote address this node sends its
	// tunnel traffic to.
	FDB map[string]string `json:"fdb,omitempty"`
}

// KubeProxyState is what the agent saw of kube-proxy on its node.
type KubeProxyState struct {
	Running bool   `json:"running"`
	PID     int    `json:"pid,omitempty"`
	Mode    string `json:"mode,omitempty"`
	// Flags are the effective settings (command line, then its config
	// file): "cluster-cidr", "proxy-mode", "masquerade-all"...
	Flags map[string]string `json:"flags,omitempty"`
	// Healthz is the result of GET http://127.0.0.1:10256/healthz.
	Healthz *HealthCheck `json:"healthz,omitempty"`
	// ConfigUnreadable is the --config file kube-proxy names when the agent
	// could not read it (its settings are then unknown, not unset).
	ConfigUnreadable string `json:"configUnreadable,omitempty"`
	// ClusterCIDRFrom says where Flags["cluster-cidr"] was read when not
	// from the command line or config ("iptables: ! -s CIDR -j KUBE-MARK-MASQ").
	ClusterCIDRFrom string `json:"clusterCIDRFrom,omitempty"`
}

// HealthCheck is the outcome of a health endpoint probe.
type HealthCheck struct {
	OK     bool   `json:"ok"`
	Detail string `json:"detail"` // "200 OK", "connection refused"...
}

// Tunnel is an overlay device.
type Tunnel struct {
	Device string `json:"device"`
	Type   string `json:"type"`
	Local  string `json:"local,omitempty"`
	Port   int    `json:"port,omitempty"`
	VNI    int    `json:"vni,omitempty"`
	MAC    string `json:"mac,omitempty"`
}

// ServiceRule is the fingerprint of one Service port's NAT rules on a node.
type ServiceRule struct {
	// Service is "namespace/name", Port "port/protocol" (e.g. "80/TCP").
	Service   string `json:"svc"`
	Port      string `json:"port"`
	ClusterIP string `json:"ip,omitempty"`
	// Endpoints is the number of DNAT targets and Hash their EndpointsHash.
	Endpoints int    `json:"n"`
	Hash      string `json:"h"`
	// Targets lists the DNAT targets (ip:port) only when they differ from
	// what the agent expected from the API, to keep results small.
	Targets []string `json:"t,omitempty"`
}

// Key is "namespace/name port/proto".
func (r ServiceRule) Key() string { return r.Service + " " + r.Port }

// EndpointsHash is the fingerprint of a set of endpoints (ip:port): the
// first 12 hex digits of the SHA-256 of the sorted set, "-" for none.
func EndpointsHash(targets []string) string {
	if len(targets) == 0 {
		return "-"
	}
	s := append([]string(nil), targets...)
	sort.Strings(s)
	h := sha256.Sum256([]byte(strings.Join(s, ",")))
	return hex.EncodeToString(h[:6])
}

// ProbeResult is the outcome of one probe of the plan.
type ProbeResult struct {
	ID     string  `json:"id"` // Probe.ID
	Status string  `json:"s"`  // ok, fail, skipped, error
	Detail string  `json:"d,omitempty"`
	RTTms  float64 `json:"rtt,omitempty"`
}

// Probe outcome statuses.
const (
	ProbeOK      = "ok"
	ProbeFail    = "fail"
	ProbeSkipped = "skipped"
	ProbeError   = "error"
)
