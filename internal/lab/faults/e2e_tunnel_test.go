package faults_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netdoctor/netdoctor/internal/command"
	"github.com/netdoctor/netdoctor/internal/lab"
	"github.com/netdoctor/netdoctor/internal/lab/faults"
	"github.com/netdoctor/netdoctor/internal/lab/flannel"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

// TestLabSourceMismatchAndDNSPath brings up a lab of its own (name and ranges apart from the
// other end-to-end tests) and proves overlay-source-mismatch and dns-resolution-failed: inject,
// the kernel and API state the injection claims, every Check (broken ones fail, the others
// pass), heal, the state gone, every Check passes again; `lab down` leaves nothing.
func TestLabSourceMismatchAndDNSPath(t *testing.T) {
	testutil.RequireRoot(t)
	for _, p := range []string{"ping", "ip", "iptables", "iptables-save", "nft", "conntrack"} {
		testutil.RequireProgram(t, p)
	}
	if testing.Short() {
		t.Skip("skipped in -short: brings up a whole cluster")
	}
	k8s, self := binaries(t)
	root := t.TempDir()
	name := "srcdns"
	c := lab.Config{Name: name, Nodes: 3, ProxyMode: "iptables", StateRoot: root, K8sBin: k8s, SelfBin: self,
		UnderlayCIDR: netip.MustParsePrefix("198.18.24.0/24"), ClusterCIDR: netip.MustParsePrefix("198.18.160.0/19"),
		ServiceCIDR: netip.MustParsePrefix("198.19.160.0/19")}.WithDefaults()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	l, err := lab.Up(ctx, c, lab.UpOptions{Progress: func(s string) { t.Log(s) }})
	if err != nil {
		t.Fatal(err)
	}
	// Only now: a lab this run did not bring up (another run's, live) is not this test's to remove.
	t.Cleanup(func() { _, _ = lab.Down(name, root) })
	if arpAnnounceBefore, err = lab.GetSysctl(lab.NetnsPrefix(name)+"node2", arpAnnounce); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		id               string
		injected, healed func(t *testing.T, ctx context.Context, l *lab.Lab, tg faults.Target)
	}{
		{"overlay-source-mismatch", sourceMismatchInjected, sourceMismatchHealed},
		{"dns-resolution-failed", dnsPathInjected, dnsPathHealed},
	}
	for _, tt := range tests {
		f, ok := faults.Get(tt.id)
		if !ok {
			t.Fatalf("fault %s is not registered", tt.id)
		}
		t.Run(tt.id, func(t *testing.T) {
			begin := time.Now()
			stateCycle(t, ctx, l, f, tt.injected, tt.healed)
			t.Logf("%s: inject, verify, heal, verify in %s", f.ID, time.Since(begin).Round(100*time.Millisecond))
		})
	}
	downLeavesNothing(t, l, root)
}

// stateCycle is moreCycle with state assertions after inject and after heal (nil: none).
func stateCycle(t *testing.T, ctx context.Context, l *lab.Lab, f faults.Fault, injected, healedState func(*testing.T, context.Context, *lab.Lab, faults.Target)) {
	in, err := faults.Inject(ctx, l, f.ID, "node2")
	if err != nil {
		_, _ = faults.Heal(ctx, l, f.ID)
		t.Fatal(err)
	}
	healed := false
	defer func() {
		if !healed {
			if _, err := faults.Heal(ctx, l, f.ID); err != nil {
				t.Errorf("heal after failure: %v", err)
			}
		}
	}()
	tg, err := faults.NewTarget(l, in.Node)
	if err != nil {
		t.Fatal(err)
	}
	p := faults.NewProber(l)
	for _, r := range p.Verify(ctx, f, tg, true) {
		t.Logf("injected: %s from %s to %s: ok=%v %s", r.Check, r.From, r.To, r.OK, r.Err)
		if !r.Pass {
			t.Errorf("injected: %s from %s to %s: traffic ok=%v (%s)", r.Check, r.From, r.To, r.OK, r.Err)
		}
	}
	if injected != nil {
		injected(t, ctx, l, tg)
	}
	h, err := faults.Heal(ctx, l, f.ID)
	healed = true
	if err != nil || len(h) != 1 {
		t.Fatalf("heal: %v, %v", h, err)
	}
	if healedState != nil {
		healedState(t, ctx, l, tg)
	}
	for _, r := range p.Verify(ctx, f, tg, false) {
		t.Logf("healed: %s from %s to %s: ok=%v %s", r.Check, r.From, r.To, r.OK, r.Err)
		if !r.Pass {
			t.Errorf("healed: %s from %s to %s still fails: %s", r.Check, r.From, r.To, r.Err)
		}
	}
	if act, _ := faults.Active(l); len(act) != 0 {
		t.Errorf("still recorded as injected: %v", act)
	}
}

const arpAnnounce = "net.ipv4.conf.eth0.arp_announce"

// arpAnnounceBefore is node2's arp_announce before overlay-source-mismatch.
var arpAnnounceBefore string

// nodeFacts is what the test reads of one lab namespace.
type nodeFacts struct {
	addrs   []string // eth0's addresses
	local   string   // flannel.1's local address ("" without flannel.1)
	neighX  string   // eth0's neighbour entry for X: its MAC ("" without one)
	uplinkM string   // eth0's MAC
}

func readFacts(t *testing.T, netnsName string, x netip.Addr) nodeFacts {
	t.Helper()
	h, err := lab.Handle(netnsName)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	var f nodeFacts
	up, err := h.LinkByName(lab.UplinkName)
	if err != nil {
		t.Fatal(err)
	}
	f.uplinkM = up.Attrs().HardwareAddr.String()
	addrs, err := h.AddrList(up, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		f.addrs = append(f.addrs, a.IP.String())
	}
	if vx, err := h.LinkByName(flannel.VXLANName); err == nil {
		if v, ok := vx.(*netlink.Vxlan); ok {
			f.local = v.SrcAddr.String()
		}
	}
	neighs, err := h.NeighList(up.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range neighs {
		if n.IP.String() == x.String() && n.HardwareAddr != nil {
			f.neighX = n.HardwareAddr.String()
		}
	}
	return f
}

func has(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func vtepMAC(t *testing.T, ctx context.Context, l *lab.Lab, node string) (flannel.Peer, string) {
	t.Helper()
	n, err := l.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p, ok := flannel.PeerFromNode(n.Name, n.Spec.PodCIDR, n.Annotations)
	if !ok {
		t.Fatalf("node %s has no flannel lease: %v", node, n.Annotations)
	}
	return p, n.Annotations[flannel.AnnoPublicIP]
}

// sourceMismatchInjected: the node holds X and sends VXLAN from it, its annotation says X,
// the peers' FDB sends its VTEP to X, X resolves to the external host on the peers, and the
// peers' conntrack shows VXLAN from X arriving (the probes ran before, so it is there).
func sourceMismatchInjected(t *testing.T, ctx context.Context, l *lab.Lab, tg faults.Target) {
	c := l.State.Config
	x := faults.SourceMismatchAddr(c)
	node := readFacts(t, tg.Netns(), x)
	if !has(node.addrs, x.String()) || node.local != x.String() {
		t.Errorf("node %s: eth0 %v, flannel.1 local %s; want %s on eth0 and as local", tg.Node, node.addrs, node.local, x)
	}
	ext := readFacts(t, c.ExtNetns(), x)
	if !has(ext.addrs, x.String()) {
		t.Errorf("external host: eth0 %v, want %s too", ext.addrs, x)
	}
	p, anno := vtepMAC(t, ctx, l, tg.Node)
	if anno != x.String() {
		t.Errorf("node %s annotation %s = %s, want %s", tg.Node, flannel.AnnoPublicIP, anno, x)
	}
	for _, n := range l.State.Nodes {
		if n.Name == tg.Node {
			continue
		}
		dst, err := faults.PeerFDBDst(n.Netns, p.VtepMAC)
		if err != nil || dst != x {
			t.Errorf("%s: FDB entry for %s's VTEP %s points at %v (%v), want %s", n.Name, tg.Node, p.VtepMAC, dst, err, x)
		}
		if f := readFacts(t, n.Netns, x); f.neighX != ext.uplinkM {
			t.Errorf("%s: neighbour %s is %q, want the external host's %s (node %s is %s)", n.Name, x, f.neighX, ext.uplinkM, tg.Node, node.uplinkM)
		} else {
			t.Logf("%s: FDB %s dst %s, neighbour %s lladdr %s (the external host)", n.Name, p.VtepMAC, dst, x, f.neighX)
		}
	}
	peerNS := lab.NetnsPath(lab.NetnsPrefix(c.Name) + tg.Peer)
	out, err := command.Output(ctx, peerNS, "conntrack", "-L", "-p", "udp", "--orig-src", x.String(), "--orig-port-dst", "8472")
	if err != nil || !strings.Contains(string(out), "src="+x.String()) {
		t.Errorf("%s: no VXLAN from %s in conntrack (%v): %q", tg.Peer, x, err, out)
	} else {
		t.Logf("%s: VXLAN from %s arrives: %s", tg.Peer, x, strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0])
	}
	out, err = command.Output(ctx, tg.NetnsPath(), "nft", "list", "table", "arp", "ndlab-overlay-source")
	if err != nil || !strings.Contains(string(out), "counter packets") || strings.Contains(string(out), "counter packets 0 ") {
		t.Errorf("node %s: arp table dropped no ARP request for %s: %v %q", tg.Node, x, err, out)
	} else {
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, "counter") {
				t.Logf("node %s: %s", tg.Node, strings.TrimSpace(line))
			}
		}
	}
}

func sourceMismatchHealed(t *testing.T, ctx context.Context, l *lab.Lab, tg faults.Target) {
	c := l.State.Config
	x := faults.SourceMismatchAddr(c)
	ns, err := l.State.Node(tg.Node)
	if err != nil {
		t.Fatal(err)
	}
	node := readFacts(t, tg.Netns(), x)
	if has(node.addrs, x.String()) || node.local != ns.IP {
		t.Errorf("healed node %s: eth0 %v, flannel.1 local %s; want no %s, local %s", tg.Node, node.addrs, node.local, x, ns.IP)
	}
	if ext := readFacts(t, c.ExtNetns(), x); has(ext.addrs, x.String()) {
		t.Errorf("healed: external host still holds %s: %v", x, ext.addrs)
	}
	p, anno := vtepMAC(t, ctx, l, tg.Node)
	if anno != ns.IP {
		t.Errorf("healed node %s annotation %s = %s, want %s", tg.Node, flannel.AnnoPublicIP, anno, ns.IP)
	}
	for _, n := range l.State.Nodes {
		if n.Name == tg.Node {
			continue
		}
		if dst, err := faults.PeerFDBDst(n.Netns, p.VtepMAC); err != nil || dst.String() != ns.IP {
			t.Errorf("healed %s: FDB entry for %s points at %v (%v), want %s", n.Name, tg.Node, dst, err, ns.IP)
		}
		if f := readFacts(t, n.Netns, x); f.neighX != "" {
			t.Errorf("healed %s: neighbour %s still %s", n.Name, x, f.neighX)
		}
	}
	if out, err := command.Output(ctx, tg.NetnsPath(), "nft", "list", "tables"); err != nil || strings.Contains(string(out), "ndlab-overlay-source") {
		t.Errorf("healed node %s: nft tables %q, %v", tg.Node, out, err)
	}
	if v, err := lab.GetSysctl(tg.Netns(), arpAnnounce); err != nil || v != arpAnnounceBefore {
		t.Errorf("healed node %s: arp_announce %q, %v; want %q as before", tg.Node, v, err, arpAnnounceBefore)
	}
}

func dnsRules(t *testing.T, ctx context.Context, tg faults.Target) []string {
	out, err := command.Output(ctx, tg.NetnsPath(), "iptables-save", "-t", "filter")
	if err != nil {
		t.Fatal(err)
	}
	var rules []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "dns-resolution-failed") {
			rules = append(rules, line)
		}
	}
	return rules
}

func dnsPathInjected(t *testing.T, ctx context.Context, l *lab.Lab, tg faults.Target) {
	rules := dnsRules(t, ctx, tg)
	if len(rules) != 2 {
		t.Errorf("node %s: want a udp and a tcp rule, got %q", tg.Node, rules)
	}
	for _, r := range rules {
		t.Logf("node %s: %s", tg.Node, r)
	}
	// The rule, not chance, broke it: its counters moved.
	out, err := command.Output(ctx, tg.NetnsPath(), "iptables-save", "-c", "-t", "filter")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if !strings.Contains(line, "dns-resolution-failed") || !strings.Contains(line, "-p udp") {
			continue
		}
		// [packets:bytes] -A FORWARD ...
		if strings.HasPrefix(line, "[0:") {
			t.Errorf("udp drop rule matched no packet: %s", line)
		} else {
			t.Logf("udp drop rule: %s", line)
		}
	}
}

func dnsPathHealed(t *testing.T, ctx context.Context, _ *lab.Lab, tg faults.Target) {
	if rules := dnsRules(t, ctx, tg); len(rules) != 0 {
		t.Errorf("healed node %s: rules left %q", tg.Node, rules)
	}
}
