package agent

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/netdoctor/netdoctor/internal/cluster"
	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

// Two fresh namespaces joined by a veth (MTU 1400): "a" probes "b", where a
// probe target and a DNS server run. Every probe kind, pass and fail.
func TestRunProbesInNamespaces(t *testing.T) {
	testutil.RequireRoot(t)
	a := testutil.NewNetns(t, "cd-pa")
	b := testutil.NewNetns(t, "cd-pb")
	testutil.MustRun(t, a, "ip", "link", "add", "cdp0", "mtu", "1400", "type", "veth", "peer", "name", "cdp1", "mtu", "1400", "netns", b)
	testutil.MustRun(t, a, "ip", "addr", "add", "198.18.200.1/29", "dev", "cdp0")
	testutil.MustRun(t, a, "ip", "link", "set", "cdp0", "up")
	testutil.MustRun(t, b, "ip", "addr", "add", "198.18.200.2/29", "dev", "cdp1")
	testutil.MustRun(t, b, "ip", "link", "set", "cdp1", "up")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Sockets opened inside b stay in b.
	var tl net.Listener
	var pc net.PacketConn
	err := namespace.Do(testutil.Path(b), func() error {
		var err error
		if tl, err = net.Listen("tcp", "198.18.200.2:8473"); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", "198.18.200.2:53")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	defer func() { _ = tl.Close() }()
	testutil.ServeDNS(t, pc, map[string]string{"web.prod.svc.cluster.local.": "web.prod.svc.cluster.local. 5 IN A 198.19.0.5"})

	plan := []cluster.Probe{
		{ID: "icmp", Netns: cluster.FromHost, Kind: cluster.KindPodICMP, Target: "198.18.200.2"},
		{ID: "tcp", Netns: cluster.FromHost, Kind: cluster.KindPodTCP, Target: "198.18.200.2:8473"},
		{ID: "refused", Netns: cluster.FromHost, Kind: cluster.KindEndpoint, Target: "198.18.200.2:8474"},
		{ID: "timeout", Netns: cluster.FromHost, Kind: cluster.KindPodTCP, Target: "198.18.200.5:80"},
		{ID: "dns", Netns: cluster.FromHost, Kind: cluster.KindDNSNS, Target: "web.prod.svc.cluster.local.", Server: "198.18.200.2", Expect: "198.19.0.5"},
		{ID: "dns-wrong", Netns: cluster.FromHost, Kind: cluster.KindDNSShort, Target: "web.prod.svc.cluster.local.", Server: "198.18.200.2", Expect: "198.19.0.6"},
		{ID: "dns-nx", Netns: cluster.FromHost, Kind: cluster.KindDNSFQDN, Target: "nope.svc.cluster.local.", Server: "198.18.200.2"},
		{ID: "df-path", Netns: cluster.FromHost, Kind: cluster.KindMTU, Target: "198.18.200.2"},
		{ID: "df-big", Netns: cluster.FromHost, Kind: cluster.KindMTU, Target: "198.18.200.2", Size: 1450},
		{ID: "udp-silent", Netns: cluster.FromHost, Kind: cluster.KindOverlay, Target: "198.18.200.2:53"},
		{ID: "pod", Netns: cluster.FromPod, Kind: cluster.KindPodICMP, Target: "198.18.200.2"},
	}
	want := map[string]string{
		"icmp": "ok", "tcp": "ok", "refused": "fail:refused", "timeout": "fail:no answer", "dns": "ok",
		"dns-wrong": "fail:want 198.19.0.6", "dns-nx": "fail:NXDOMAIN", "df-path": "ok", "df-big": "fail:too long",
		"udp-silent": "ok", "pod": "skipped:no pod here",
	}
	var res []cluster.ProbeResult
	start := time.Now()
	res = RunProbes(ctx, plan, testutil.Path(a), "", "no pod here")
	t.Logf("%d probes in %s", len(res), time.Since(start))
	for _, r := range res {
		w := want[r.ID]
		st, sub, _ := strings.Cut(w, ":")
		if r.Status != st || !strings.Contains(r.Detail, sub) {
			t.Errorf("%s: %s %q, want %s containing %q", r.ID, r.Status, r.Detail, st, sub)
		}
	}
	// Nothing listens on 8472 in b: the kernel answers ICMP port
	// unreachable. ICMP errors are rate limited host-wide (shared with
	// every other namespace), so one try may see none; a few tries must.
	rejected := false
	for i := 0; i < 5 && !rejected; i++ {
		r := RunProbes(ctx, []cluster.Probe{{ID: "udp", Netns: cluster.FromHost, Kind: cluster.KindOverlay, Target: "198.18.200.2:8472"}}, testutil.Path(a), "", "")
		rejected = r[0].Status == cluster.ProbeFail && strings.Contains(r[0].Detail, "port unreachable")
		if !rejected {
			time.Sleep(time.Second)
		}
	}
	if !rejected {
		t.Errorf("UDP to a closed port never reported the ICMP port unreachable")
	}
}
