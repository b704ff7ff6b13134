package rules_test

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/netdoctor/netdoctor/internal/facts"
	"github.com/netdoctor/netdoctor/internal/finding"
	"github.com/netdoctor/netdoctor/internal/rules"
)

// loadFixture reads a snapshot captured from the lab node (see
// TestNodeCheckEndToEnd -update) and returns a fresh copy to mutate.
func loadFixture(t testing.TB, name string) *facts.NodeSnapshot {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name+".json"))
	if err != nil {
		t.Fatalf("fixture %s: %v (capture it as root with go test ./internal/nodecheck -update)", name, err)
	}
	var s facts.NodeSnapshot
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("fixture %s: %v", name, err)
	}
	return &s
}

// The lab's address plan (see internal/nodecheck).
const (
	serviceCIDR = "198.19.0.0/16"
	nodePodCIDR = "198.18.129.0/24"
	peerPodCIDR = "198.18.130.0/24"
)

var labHints = rules.Hints{ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix(serviceCIDR)}}

func evaluate(s *facts.NodeSnapshot, before *facts.NodeSnapshot, h rules.Hints) *finding.Report {
	return rules.Evaluate(&rules.Input{Node: s, Before: before, Hints: h})
}

// problems returns the IDs of warning and critical findings, sorted.
func problems(r *finding.Report) []string { return r.ProblemIDs() }

// checkStatus returns the check with the ID (zero if there is none).
func checkStatus(r *finding.Report, id string) finding.Check {
	c, _ := r.Check(id)
	return c
}

func findingOf(r *finding.Report, id string) *finding.Finding {
	for i := range r.Findings {
		if r.Findings[i].ID == id {
			return &r.Findings[i]
		}
	}
	return nil
}

// TestRulesOnCapturedFaults runs the rules on the snapshots captured from the
// lab node with each fault injected: exactly the expected finding.
func TestRulesOnCapturedFaults(t *testing.T) {
	tests := []struct {
		fixture string
		want    []string
		before  string // earlier snapshot, for counters
	}{
		{fixture: "flannel-clean"},
		{fixture: "flannel-ip-forward-disabled", want: []string{"ip-forward-disabled"}},
		{fixture: "flannel-bridge-nf-disabled", want: []string{"bridge-nf-disabled"}},
		{fixture: "flannel-forward-policy-drop", want: []string{"forward-policy-drop"}},
		{fixture: "flannel-forward-policy-drop-nft", want: []string{"forward-policy-drop"}},
		{fixture: "flannel-overlay-port-blocked", want: []string{"overlay-port-blocked"}},
		{fixture: "flannel-overlay-port-blocked-nft", want: []string{"overlay-port-blocked"}},
		{fixture: "flannel-pod-cidr-overlap", want: []string{"pod-cidr-overlap"}},
		{fixture: "flannel-pod-cidr-overlap-latent", want: []string{"pod-cidr-overlap"}},
		{fixture: "flannel-pod-route-missing", want: []string{"pod-route-missing"}},
		{fixture: "flannel-overlay-fdb-missing", want: []string{"overlay-fdb-missing"}},
		{fixture: "flannel-overlay-fdb-wrong-dst", want: []string{"overlay-fdb-missing"}},
		{fixture: "flannel-overlay-source-mismatch", want: []string{"overlay-source-mismatch"}},
		{fixture: "flannel-mtu-mismatch", want: []string{"mtu-mismatch"}},
		{fixture: "flannel-rp-filter-strict", want: []string{"rp-filter-strict"}},
		{fixture: "flannel-nic-queue-drops"}, // since boot only: info
		{fixture: "flannel-nic-queue-drops", before: "flannel-clean", want: []string{"nic-queue-drops"}},
		{fixture: "flannel-ephemeral-ports-exhausted", want: []string{"ephemeral-ports-exhausted"}},
		{fixture: "flannel-kube-proxy-cluster-cidr-missing", want: []string{"kube-proxy-cluster-cidr-missing"}},
		{fixture: "flannel-kube-proxy-cluster-cidr-wrong", want: []string{"kube-proxy-cluster-cidr-wrong"}},
	}
	for _, tt := range tests {
		name := tt.fixture
		if tt.before != "" {
			name += "-after-" + tt.before
		}
		t.Run(name, func(t *testing.T) {
			var before *facts.NodeSnapshot
			if tt.before != "" {
				before = loadFixture(t, tt.before)
			}
			r := evaluate(loadFixture(t, tt.fixture), before, labHints)
			if got := problems(r); !slices.Equal(got, tt.want) {
				t.Fatalf("findings %v, want %v", got, tt.want)
			}
			for _, c := range r.Checks {
				if c.Status == finding.Error {
					t.Errorf("check %s: error: %s", c.ID, c.Reason)
				}
			}
			for _, id := range tt.want {
				f := findingOf(r, id)
				if len(f.Evidence) == 0 || f.Remediation == "" || f.Docs == "" {
					t.Errorf("%s: evidence, remediation and docs are required: %+v", id, f)
				}
			}
		})
	}
}

// TestEvidence pins the evidence lines that prove each captured fault.
func TestEvidence(t *testing.T) {
	tests := []struct {
		fixture, id string
		contains    []string
	}{
		{"flannel-ip-forward-disabled", "ip-forward-disabled", []string{"sysctl net.ipv4.ip_forward = 0"}},
		{"flannel-bridge-nf-disabled", "bridge-nf-disabled", []string{"sysctl net.bridge.bridge-nf-call-iptables = 0", "bridge cni0 has 2 veth port(s)"}},
		{"flannel-forward-policy-drop", "forward-policy-drop", []string{"table filter chain FORWARD policy: policy DROP", "KUBE-FORWARD"}},
		{"flannel-forward-policy-drop-nft", "forward-policy-drop", []string{"nft table ndtfw chain podfwd policy: policy drop"}},
		{"flannel-overlay-port-blocked", "overlay-port-blocked", []string{"table filter chain INPUT rule 5: -A INPUT -p udp -m udp --dport 8472 -j DROP", "inbound VXLAN udp 198.18.0.2:40000 -> 198.18.0.1:8472"}},
		{"flannel-overlay-port-blocked-nft", "overlay-port-blocked", []string{"nft table ndtfw chain out rule 1", "udp dport 8472", "outbound VXLAN"}},
		{"flannel-pod-cidr-overlap", "pod-cidr-overlap", []string{"address 198.18.129.128/25 on eth0", "pod route prefix /24"}},
		{"flannel-pod-route-missing", "pod-route-missing", []string{"route used for 198.18.130.1: none", "neighbour: 198.18.130.0 dev flannel.1 lladdr 0e:00:00:00:01:02 PERMANENT"}},
		{"flannel-overlay-fdb-missing", "overlay-fdb-missing", []string{"route: 198.18.130.0/24 via 198.18.130.0 dev flannel.1", "fdb on flannel.1 for 0e:00:00:00:01:02: none"}},
		{"flannel-overlay-fdb-wrong-dst", "overlay-fdb-missing", []string{"fdb: 0e:00:00:00:01:02 dev flannel.1 dst 198.18.0.1"}},
		{"flannel-overlay-source-mismatch", "overlay-source-mismatch", []string{"local 198.18.0.21", "addresses on eth0: 198.18.0.1/24, 198.18.0.21/24 (secondary)"}},
		{"flannel-mtu-mismatch", "mtu-mismatch", []string{"overlay flannel.1 mtu 1450 > uplink eth0 mtu 1400 - 50 (VXLAN) = 1350", "pod veth vethpoda mtu 1450"}},
		{"flannel-rp-filter-strict", "rp-filter-strict", []string{"effective rp_filter = 1", "2 uplinks with global addresses"}},
		{"flannel-ephemeral-ports-exhausted", "ephemeral-ports-exhausted", []string{"9 tcp sockets from 198.18.0.1 to 198.18.0.1:9000", "net.ipv4.ip_local_port_range = 40000 40009 (10 ports)"}},
		{"flannel-kube-proxy-cluster-cidr-missing", "kube-proxy-cluster-cidr-missing", []string{"3 cluster-IP service rules"}},
		{"flannel-kube-proxy-cluster-cidr-wrong", "kube-proxy-cluster-cidr-wrong", []string{"! -s 198.19.0.0/16 -d 198.19.0.80/32", "kube-proxy cluster CIDR 198.19.0.0/16 (from the masquerade rules)"}},
	}
	for _, tt := range tests {
		t.Run(tt.fixture, func(t *testing.T) {
			r := evaluate(loadFixture(t, tt.fixture), nil, labHints)
			f := findingOf(r, tt.id)
			if f == nil {
				t.Fatalf("no %s finding", tt.id)
			}
			all := strings.Join(f.Evidence, "\n")
			for _, want := range tt.contains {
				if !strings.Contains(all, want) {
					t.Errorf("evidence lacks %q:\n%s", want, all)
				}
			}
		})
	}
}
