package flannel

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/netdoctor/netdoctor/internal/testutil"
)

func handle(t *testing.T, ns string) *netlink.Handle {
	t.Helper()
	n, err := netns.GetFromPath(testutil.Path(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = n.Close() }()
	h, err := netlink.NewHandleAt(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

func TestAnnotationsRoundTrip(t *testing.T) {
	mac := netlinkMAC(t, "0a:1b:2c:3d:4e:5f")
	a := Annotations(netip.MustParseAddr("198.18.0.11"), mac)
	if a[AnnoBackendData] != `{"VNI":1,"VtepMAC":"0a:1b:2c:3d:4e:5f"}` || a[AnnoKubeSubnetManager] != "true" {
		t.Fatalf("annotations %v", a)
	}
	p, ok := PeerFromNode("node1", "198.18.128.0/24", a)
	if !ok || p.PublicIP.String() != "198.18.0.11" || p.VtepIP().String() != "198.18.128.0" || p.VtepMAC.String() != mac.String() {
		t.Fatalf("peer %+v ok=%v", p, ok)
	}
	for _, bad := range []map[string]string{nil, {AnnoBackendType: "host-gw"}, {AnnoBackendType: "vxlan", AnnoPublicIP: "x"}} {
		if _, ok := PeerFromNode("n", "198.18.128.0/24", bad); ok {
			t.Errorf("accepted %v", bad)
		}
	}
	if _, ok := PeerFromNode("n", "", a); ok {
		t.Error("accepted a node without pod CIDR")
	}
}

func netlinkMAC(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	p, ok := PeerFromNode("x", "10.0.0.0/24", map[string]string{AnnoBackendType: "vxlan", AnnoPublicIP: "10.0.0.1", AnnoBackendData: `{"VtepMAC":"` + s + `"}`})
	if !ok {
		t.Fatal("parse mac")
	}
	return p.VtepMAC
}

func TestSubnetEnv(t *testing.T) {
	got := SubnetEnv(Local{PodCIDR: netip.MustParsePrefix("198.18.129.0/24"), ClusterCIDR: netip.MustParsePrefix("198.18.128.0/17")})
	want := "FLANNEL_NETWORK=198.18.128.0/17\nFLANNEL_SUBNET=198.18.129.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
	if got != want {
		t.Fatalf("got %q want %q", got, want)
	}
}

// TestTwoNodeOverlay builds two node namespaces joined by a veth "underlay", programs flannel's
// datapath on both and pings pod to pod across the VXLAN overlay, then removes the peer and
// sees the path fail.
func TestTwoNodeOverlay(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "iptables")
	n1, n2 := testutil.NewNetns(t, "fl1"), testutil.NewNetns(t, "fl2")
	p1, p2 := testutil.NewNetns(t, "flp1"), testutil.NewNetns(t, "flp2")
	testutil.MustRun(t, n1, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", testutil.Path(n2))
	cluster := netip.MustParsePrefix("198.18.128.0/17")
	nodes := []struct {
		ns, pod, ip, cidr, podIP string
	}{
		{n1, p1, "198.18.0.11", "198.18.128.0/24", "198.18.128.2"},
		{n2, p2, "198.18.0.12", "198.18.129.0/24", "198.18.129.2"},
	}
	var peers []Peer
	for i, n := range nodes {
		testutil.MustRun(t, n.ns, "ip", "addr", "add", n.ip+"/24", "dev", "eth0")
		testutil.MustRun(t, n.ns, "ip", "link", "set", "eth0", "up")
		testutil.MustRun(t, n.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		l := Local{PublicIP: netip.MustParseAddr(n.ip), Uplink: "eth0", PodCIDR: netip.MustParsePrefix(n.cidr), ClusterCIDR: cluster}
		mac, err := SetupLocal(handle(t, n.ns), l)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := SetupLocal(handle(t, n.ns), l); err != nil {
			t.Fatalf("second SetupLocal not idempotent: %v", err)
		}
		if err := EnsureRules(context.Background(), testutil.Path(n.ns), cluster, l.PodCIDR); err != nil {
			t.Fatal(err)
		}
		if err := EnsureRules(context.Background(), testutil.Path(n.ns), cluster, l.PodCIDR); err != nil {
			t.Fatal(err)
		}
		p, _ := PeerFromNode("node"+string(rune('1'+i)), n.cidr, Annotations(l.PublicIP, mac))
		peers = append(peers, p)
		// A pod: veth into cni0.
		testutil.MustRun(t, n.ns, "ip", "link", "add", "vethp", "mtu", "1450", "type", "veth", "peer", "name", "eth0", "netns", testutil.Path(n.pod))
		testutil.MustRun(t, n.ns, "ip", "link", "set", "vethp", "master", BridgeName, "up")
		testutil.MustRun(t, n.pod, "ip", "link", "set", "eth0", "mtu", "1450", "up")
		testutil.MustRun(t, n.pod, "ip", "addr", "add", n.podIP+"/24", "dev", "eth0")
		testutil.MustRun(t, n.pod, "ip", "route", "add", "default", "via", GatewayIP(l.PodCIDR).String())
	}
	if err := AddPeer(handle(t, n1), peers[1]); err != nil {
		t.Fatal(err)
	}
	if err := AddPeer(handle(t, n2), peers[0]); err != nil {
		t.Fatal(err)
	}
	// The first packet may wait for neighbour resolution on a loaded machine: allow retries.
	// ping exits 0 once any of the 3 echoes is answered.
	if out, err := testutil.Run(t, p1, "ping", "-c3", "-i0.5", "-W2", nodes[1].podIP); err != nil {
		t.Fatalf("pod to pod across the overlay: %v\n%s", err, out)
	}
	// Path MTU: 1422 bytes of ICMP payload fit in 1450, 1423 do not.
	testutil.MustRun(t, p1, "ping", "-c1", "-W2", "-M", "do", "-s", "1422", nodes[1].podIP)
	if _, err := testutil.Run(t, p1, "ping", "-c1", "-W1", "-M", "do", "-s", "1423", nodes[1].podIP); err == nil {
		t.Fatal("1423-byte DF ping passed a 1450 MTU path")
	}
	routes := testutil.MustRun(t, n1, "ip", "route", "show", "dev", VXLANName)
	if !strings.Contains(routes, "198.18.129.0/24 via 198.18.129.0 onlink") {
		t.Fatalf("route on flannel.1: %q", routes)
	}
	fdb := testutil.MustRun(t, n1, "bridge", "fdb", "show", "dev", VXLANName)
	if !strings.Contains(fdb, peers[1].VtepMAC.String()+" dst 198.18.0.12 self permanent") {
		t.Fatalf("fdb: %q", fdb)
	}
	details := testutil.MustRun(t, n1, "ip", "-d", "link", "show", VXLANName)
	for _, w := range []string{"mtu 1450", "vxlan id 1", "local 198.18.0.11", "dev eth0", "dstport 8472", "nolearning"} {
		if !strings.Contains(details, w) {
			t.Errorf("flannel.1 lacks %q: %s", w, details)
		}
	}
	nat := testutil.MustRun(t, n1, "iptables-save", "-t", "nat")
	if !strings.Contains(nat, "-A FLANNEL-POSTRTG -s 198.18.128.0/17 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully") ||
		strings.Count(nat, "-j FLANNEL-POSTRTG") != 1 {
		t.Fatalf("flannel nat rules:\n%s", nat)
	}
	if err := DelPeer(handle(t, n1), peers[1]); err != nil {
		t.Fatal(err)
	}
	if _, err := testutil.Run(t, p1, "ping", "-c1", "-W1", nodes[1].podIP); err == nil {
		t.Fatal("ping passed after the peer was removed")
	}
}
