package faults_test

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/netdoctor/netdoctor/internal/lab"
	"github.com/netdoctor/netdoctor/internal/lab/faults"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

// moreGroups are the fault groups TestLabMoreFaults proves (datapath is TestLab's).
var moreGroups = map[string]bool{"host": true, "dns": true, "service": true, "kube-proxy": true, "cidr": true}

// modeDependent are the faults whose injection depends on kube-proxy's mode: proven in both.
var modeDependent = map[string]bool{
	"service-rules-missing": true, "service-no-endpoints": true, "kube-proxy-not-running": true, "kube-proxy-not-critical": true,
	"kube-proxy-cluster-cidr-missing": true, "kube-proxy-cluster-cidr-wrong": true,
	"conntrack-insert-failed": true, // its race goes through kube-proxy's DNAT of two ClusterIPs
}

// TestLabMoreFaults brings up a lab in iptables mode and proves every fault of the host,
// dns, service, kube-proxy and cidr groups (inject, the Checks that must fail fail and the
// others pass, heal, every Check passes again); then a lab in nftables mode for the faults
// that depend on the proxy mode. It uses its own lab name and ranges so that it can run
// beside other labs. NETDOCTOR_LAB_ATTACH=NAME runs the faults on an existing lab instead
// (mode taken from it; NETDOCTOR_LAB_FAULTS=id,id limits the faults).
func TestLabMoreFaults(t *testing.T) {
	testutil.RequireRoot(t)
	for _, p := range []string{"ping", "iptables", "iptables-save", "nft", "conntrack"} {
		testutil.RequireProgram(t, p)
	}
	if testing.Short() {
		t.Skip("skipped in -short: brings up a whole cluster")
	}
	only := map[string]bool{}
	if s := os.Getenv("NETDOCTOR_LAB_FAULTS"); s != "" {
		for _, id := range strings.Split(s, ",") {
			only[id] = true
		}
	}
	want := func(f faults.Fault, mode string) bool {
		if !moreGroups[f.Group] || (len(only) > 0 && !only[f.ID]) {
			return false
		}
		return mode == "iptables" || modeDependent[f.ID]
	}
	if name := os.Getenv("NETDOCTOR_LAB_ATTACH"); name != "" {
		l, err := lab.Open(name, "")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		defer cancel()
		for _, f := range faults.All() {
			if want(f, l.State.Config.ProxyMode) {
				t.Run(f.ID, func(t *testing.T) { moreCycle(t, ctx, l, f) })
			}
		}
		return
	}
	k8s, self := binaries(t)
	root := t.TempDir()
	for _, mode := range []string{"iptables", "nftables"} {
		name := "more" + mode[:3]
		c := lab.Config{Name: name, Nodes: 3, ProxyMode: mode, StateRoot: root, K8sBin: k8s, SelfBin: self,
			UnderlayCIDR: netip.MustParsePrefix("198.18.17.0/24"), ClusterCIDR: netip.MustParsePrefix("198.18.192.0/18"),
			ServiceCIDR: netip.MustParsePrefix("198.19.192.0/18")}.WithDefaults()
		ok := t.Run(mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
			defer cancel()
			l, err := lab.Up(ctx, c, lab.UpOptions{Progress: func(s string) { t.Log(s) }})
			if err != nil {
				t.Fatal(err)
			}
			// Only now: a lab this run did not bring up (another run's, live) is not this test's to remove.
			t.Cleanup(func() { _, _ = lab.Down(name, root) })
			for _, f := range faults.All() {
				if want(f, mode) {
					t.Run(f.ID, func(t *testing.T) {
						begin := time.Now()
						moreCycle(t, ctx, l, f)
						t.Logf("%s: inject, verify, heal, verify in %s", f.ID, time.Since(begin).Round(100*time.Millisecond))
					})
				}
			}
			downLeavesNothing(t, l, root)
		})
		if !ok {
			break
		}
	}
}

// moreCycle injects f on node2, asserts the checks that must fail fail and the others pass
// (every outcome logged: the evidence of each fault), heals it, and asserts every check passes.
func moreCycle(t *testing.T, ctx context.Context, l *lab.Lab, f faults.Fault) {
	stateCycle(t, ctx, l, f, nil, nil)
}
