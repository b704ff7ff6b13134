package agent

import (
	"os"
	"strings"
	"testing"

	"github.com/netdoctor/netdoctor/internal/facts"
)

// The fixtures are the real kube-proxy dumps the netfilter package captured
// in the lab (iptables and nftables modes).
func TestExtractServiceNAT(t *testing.T) {
	ipt, err := os.ReadFile("../netfilter/testdata/kube-proxy-iptables.save")
	if err != nil {
		t.Fatalf("fixture: %v", err)
	}
	nft, err := os.ReadFile("../netfilter/testdata/kube-proxy-nftables.json")
	if err != nil {
		t.Fatalf("fixture: %v", err)
	}
	for _, tc := range []struct {
		name, mode string
		snap       facts.NodeSnapshot
	}{
		{"iptables", "iptables", facts.NodeSnapshot{Netfilter: facts.Netfilter{IptablesNft: string(ipt)}}},
		{"nftables", "nftables", facts.NodeSnapshot{Netfilter: facts.Netfilter{NftJSON: string(nft)}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mode, nat, err := ExtractServiceNAT(&tc.snap)
			if err != nil || mode != tc.mode {
				t.Fatalf("mode %q err %v", mode, err)
			}
			got := map[string]string{}
			for _, n := range nat {
				got[n.Key()] = strings.Join(n.Targets, ",")
			}
			t.Logf("%v", got)
			if v, ok := got["198.19.0.1 TCP 443"]; !ok || v != "198.18.0.2:6443" {
				t.Errorf("kubernetes service: %q (present %v)", v, ok)
			}
			if v := got["198.19.0.80 TCP 80"]; strings.Count(v, ",") != 2 {
				t.Errorf("default/web: want 3 endpoints, got %q", v)
			}
		})
	}
	mode, nat, err := ExtractServiceNAT(&facts.NodeSnapshot{})
	if mode != "" || len(nat) != 0 || err != nil {
		t.Errorf("empty snapshot: %q %v %v", mode, nat, err)
	}
}
