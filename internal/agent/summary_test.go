package agent

import (
	"os"
	"strings"
	"testing"

	"github.com/netdoctor/netdoctor/internal/facts"
)

// kube-proxy's --config file lives in its own mount namespace and may be
// unreadable; its clusterCIDR is then read back from its real iptables
// rules (fixture captured from kube-proxy in the lab).
func TestSummarizeKubeProxyClusterCIDRFromRules(t *testing.T) {
	ipt, err := os.ReadFile("../netfilter/testdata/kube-proxy-iptables.save")
	if err != nil {
		t.Fatalf("fixture: %v", err)
	}
	snap := &facts.NodeSnapshot{
		Netfilter: facts.Netfilter{IptablesNft: string(ipt)},
		Processes: []facts.Process{{PID: 42, Name: "kube-proxy", SameNetns: true,
			Cmdline: []string{"netdoctor-k8s", "kube-proxy", "--config=/var/lib/kube-proxy/config.conf", "--hostname-override=node1"}}},
	}
	s := Summarize("node1", snap, Hints{})
	kp := s.KubeProxy
	if kp == nil {
		t.Fatal("no kube-proxy state")
	}
	if kp.ConfigUnreadable != "/var/lib/kube-proxy/config.conf" {
		t.Errorf("config unreadable: %q", kp.ConfigUnreadable)
	}
	if kp.Flags["cluster-cidr"] != "198.18.128.0/17" || !strings.Contains(kp.ClusterCIDRFrom, "KUBE-MARK-MASQ") {
		t.Errorf("cluster-cidr %q from %q", kp.Flags["cluster-cidr"], kp.ClusterCIDRFrom)
	}
	if kp.Flags["hostname-override"] != "node1" {
		t.Errorf("flags %v", kp.Flags)
	}
}
