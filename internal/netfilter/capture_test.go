package netfilter

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/netdoctor/netdoctor/internal/testutil"
)

var capture = flag.Bool("capture", false, "regenerate testdata/*.save and *.json fixtures by loading testdata/src into fresh network namespaces (root)")

// fixtureCapture describes how one fixture is made: load sources with real
// tools in a fresh netns, then save with the real dump tool.
type fixtureCapture struct {
	out  string
	load [][]string // commands, "SRC/" prefix = testdata/src path
	save []string
}

var fixtureCaptures = []fixtureCapture{
	{out: "kubeproxy-like-iptables-nft.save", load: [][]string{{"iptables-restore", "SRC/kube-proxy.rules"}}, save: []string{"iptables-save"}},
	{out: "kubeproxy-like-iptables-legacy.save", load: [][]string{{"iptables-legacy-restore", "SRC/kube-proxy.rules"}}, save: []string{"iptables-legacy-save"}},
	{out: "kubeproxy-like-nftables.json", load: [][]string{{"nft", "-f", "SRC/kube-proxy.nft"}}, save: []string{"nft", "-j", "list", "ruleset"}},
	{out: "ipsets.save", load: [][]string{{"ipset", "restore", "-f", "SRC/ipsets.ipset"}}, save: []string{"ipset", "save"}},
	{out: "firewall-iptables-nft.save", load: [][]string{{"ipset", "restore", "-f", "SRC/ipsets.ipset"}, {"iptables-restore", "SRC/firewall.rules"}}, save: []string{"iptables-save"}},
	{out: "firewall-iptables-legacy.save", load: [][]string{{"ipset", "restore", "-f", "SRC/ipsets.ipset"}, {"iptables-legacy-restore", "SRC/firewall.rules"}}, save: []string{"iptables-legacy-save"}},
	{out: "firewall-ip6tables-nft.save", load: [][]string{{"ip6tables-nft-restore", "SRC/firewall6.rules"}}, save: []string{"ip6tables-nft-save"}},
	{out: "firewall-ip6tables-legacy.save", load: [][]string{{"ip6tables-legacy-restore", "SRC/firewall6.rules"}}, save: []string{"ip6tables-legacy-save"}},
	{out: "firewall-ip6tables.save", load: [][]string{{"ip6tables-restore", "SRC/firewall6.rules"}}, save: []string{"ip6tables-save"}},
	{out: "matches-iptables-nft.save", load: [][]string{{"ipset", "restore", "-f", "SRC/ipsets.ipset"}, {"iptables-restore", "SRC/matches.rules"}}, save: []string{"iptables-save"}},
	{out: "matches-nftables.json", load: [][]string{{"nft", "-f", "SRC/matches.nft"}}, save: []string{"nft", "-j", "list", "ruleset"}},
	{out: "affinity-iptables-nft.save", load: [][]string{{"iptables-restore", "SRC/affinity.rules"}}, save: []string{"iptables-save"}},
	{out: "firewall-nftables.json", load: [][]string{{"nft", "-f", "SRC/firewall.nft"}}, save: []string{"nft", "-j", "list", "ruleset"}},
}

// TestCaptureFixtures regenerates the fixtures from real tools:
//
//	sudo go test ./internal/netfilter -run TestCaptureFixtures -capture
//
// Without -capture it only checks that every fixture exists.
func TestCaptureFixtures(t *testing.T) {
	for _, fc := range fixtureCaptures {
		t.Run(fc.out, func(t *testing.T) {
			dst := filepath.Join("testdata", fc.out)
			if !*capture {
				if _, err := os.Stat(dst); err != nil {
					t.Fatalf("fixture missing (run with -capture as root): %v", err)
				}
				return
			}
			ns := testutil.NewNetns(t, "nfcap")
			for _, cmd := range fc.load {
				testutil.RequireProgram(t, cmd[0])
				args := make([]string, len(cmd)-1)
				for i, a := range cmd[1:] {
					if len(a) > 4 && a[:4] == "SRC/" {
						a, _ = filepath.Abs(filepath.Join("testdata", "src", a[4:]))
					}
					args[i] = a
				}
				testutil.MustRun(t, ns, cmd[0], args...)
			}
			testutil.RequireProgram(t, fc.save[0])
			out := testutil.MustRun(t, ns, fc.save[0], fc.save[1:]...)
			if err := os.WriteFile(dst, []byte(out+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		})
	}
}
