package faults

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

func TestUDPDispatched(t *testing.T) {
	// kube-proxy's rules as the lab printed them: lines of iptables-save -t nat, and a whole
	// `nft list table ip kube-proxy` of node2 (nftables mode).
	ipt := `-A KUBE-SERVICES -d 198.19.192.10/32 -p udp -m comment --comment "kube-system/kube-dns:dns cluster IP" -m udp --dport 53 -j KUBE-SVC-TCOU7JCQXEZGVUNU
-A KUBE-SERVICES -d 198.19.192.10/32 -p tcp -m comment --comment "kube-system/kube-dns:dns-tcp cluster IP" -m tcp --dport 53 -j KUBE-SVC-ERIFXISQEP7F7OF4
-A KUBE-SERVICES -d 198.19.192.11/32 -p tcp -m comment --comment "kube-system/kube-dns:dns-tcp cluster IP" -m tcp --dport 53 -j KUBE-SVC-ERIFXISQEP7F7OF4
-A KUBE-SERVICES -d 198.19.192.10/32 -p tcp -m comment --comment "kube-system/kube-dns:metrics cluster IP" -m tcp --dport 9153 -j KUBE-SVC-JD5MR3NA4I4DYORP`
	b, err := os.ReadFile(filepath.Join("testdata", "kube-proxy-nftables.txt"))
	if err != nil {
		t.Fatal(err)
	}
	nft := string(b)
	tests := []struct {
		name, rules, mode, ip string
		want                  bool
	}{
		{"iptables udp/53", ipt, "iptables", "198.19.192.10", true},
		{"iptables tcp/53 only", ipt, "iptables", "198.19.192.11", false},
		{"iptables unknown ip", ipt, "iptables", "198.19.192.12", false},
		{"iptables prefix of another ip", ipt, "iptables", "198.19.192.1", false},
		{"nftables udp/53, not the first element", nft, "nftables", "198.19.192.10", true},
		{"nftables tcp/80 only", nft, "nftables", "198.19.231.66", false},
		{"nftables hairpin set element, not a service", nft, "nftables", "198.18.192.4", false},
		{"nftables suffix of the ip", nft, "nftables", "98.19.192.10", false},
		{"nftables unknown ip", nft, "nftables", "198.19.192.99", false},
		{"iptables dump read as nftables", ipt, "nftables", "198.19.192.10", false},
		{"nftables dump read as iptables", nft, "iptables", "198.19.192.10", false},
	}
	for _, tt := range tests {
		if got := udpDispatched(tt.rules, tt.mode, tt.ip); got != tt.want {
			t.Errorf("%s: udpDispatched(%s) = %v, want %v", tt.name, tt.ip, got, tt.want)
		}
	}
}

func TestTwoCPUs(t *testing.T) {
	var one, two unix.CPUSet
	one.Set(3)
	two.Set(1)
	two.Set(5)
	two.Set(7)
	if _, err := twoCPUs(one); err == nil {
		t.Error("one CPU: no error")
	}
	if got, err := twoCPUs(two); err != nil || got != [2]int{1, 5} {
		t.Errorf("twoCPUs({1,5,7}) = %v, %v; want [1 5]", got, err)
	}
}

func TestRunDNSRaceRejects(t *testing.T) {
	s := netip.MustParseAddrPort("198.18.1.1:53")
	for _, o := range []DNSRaceOptions{
		{Servers: []netip.AddrPort{s}, Name: "a.", Rate: 1},
		{Servers: []netip.AddrPort{s, s}, Name: "a.", Rate: 0},
		{Servers: []netip.AddrPort{s, netip.MustParseAddrPort("[2001:db8::1]:53")}, Name: "a.", Rate: 1},
	} {
		if err := RunDNSRace(context.Background(), o); err == nil {
			t.Errorf("RunDNSRace(%+v): no error", o)
		}
	}
}

// TestDNSRaceFailsInserts is the kernel behaviour the fault stands on, in namespaces of its
// own: a client namespace, a "node" doing kube-proxy-style DNAT of two UDP Services to the
// same two backends, a backend namespace. The racing client must make the node's
// insert_failed and drop rise; a client that sends to one Service only must not.
func TestDNSRaceFailsInserts(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "iptables")
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil || set.Count() < 2 {
		t.Skip("skipped: the race needs two CPUs")
	}
	cli, node, be := testutil.NewNetns(t, "ctrc"), testutil.NewNetns(t, "ctrn"), testutil.NewNetns(t, "ctrb")
	testutil.MustRun(t, cli, "ip", "link", "add", "c0", "type", "veth", "peer", "name", "n0", "netns", testutil.Path(node))
	testutil.MustRun(t, be, "ip", "link", "add", "b0", "type", "veth", "peer", "name", "n1", "netns", testutil.Path(node))
	for _, c := range [][]string{
		{cli, "ip", "addr", "add", "198.18.1.2/24", "dev", "c0"},
		{cli, "ip", "link", "set", "c0", "up"},
		{cli, "ip", "route", "add", "default", "via", "198.18.1.1"},
		{node, "ip", "addr", "add", "198.18.1.1/24", "dev", "n0"},
		{node, "ip", "addr", "add", "198.18.2.1/24", "dev", "n1"},
		{node, "ip", "link", "set", "n0", "up"},
		{node, "ip", "link", "set", "n1", "up"},
		{node, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
		{be, "ip", "addr", "add", "198.18.2.10/24", "dev", "b0"},
		{be, "ip", "addr", "add", "198.18.2.11/24", "dev", "b0"},
		{be, "ip", "link", "set", "b0", "up"},
		{be, "ip", "route", "add", "default", "via", "198.18.2.1"},
		{node, "iptables", "-t", "nat", "-N", "KUBE-SERVICES"},
		{node, "iptables", "-t", "nat", "-A", "PREROUTING", "-j", "KUBE-SERVICES"},
	} {
		testutil.MustRun(t, c[0], c[1], c[2:]...)
	}
	for i, vip := range []string{"198.19.0.10", "198.19.0.11"} {
		svc := "KUBE-SVC-" + string(rune('A'+i))
		testutil.MustRun(t, node, "iptables", "-t", "nat", "-N", svc)
		testutil.MustRun(t, node, "iptables", "-t", "nat", "-A", "KUBE-SERVICES", "-d", vip+"/32", "-p", "udp", "--dport", "53", "-j", svc)
		for j, ep := range []string{"198.18.2.10", "198.18.2.11"} {
			sep := svc + "-SEP" + string(rune('0'+j))
			testutil.MustRun(t, node, "iptables", "-t", "nat", "-N", sep)
			testutil.MustRun(t, node, "iptables", "-t", "nat", "-A", sep, "-p", "udp", "-j", "DNAT", "--to-destination", ep+":53")
			if j == 0 {
				testutil.MustRun(t, node, "iptables", "-t", "nat", "-A", svc, "-m", "statistic", "--mode", "random", "--probability", "0.50000000000", "-j", sep)
			} else {
				testutil.MustRun(t, node, "iptables", "-t", "nat", "-A", svc, "-j", sep)
			}
		}
	}
	race := func(servers ...string) ctCounters {
		t.Helper()
		before, err := readCTCounters(testutil.Path(node))
		if err != nil {
			t.Fatal(err)
		}
		o := DNSRaceOptions{Name: "web.default.svc.cluster.local.", Rate: 500}
		for _, s := range servers {
			o.Servers = append(o.Servers, netip.MustParseAddrPort(s))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
		defer cancel()
		if err := namespace.Do(testutil.Path(cli), func() error { return RunDNSRace(ctx, o) }); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
		after, err := readCTCounters(testutil.Path(node))
		if err != nil {
			t.Fatal(err)
		}
		d := ctCounters{after.InsertFailed - before.InsertFailed, after.Drop - before.Drop, after.ClashResolve - before.ClashResolve}
		t.Logf("race to %s: %s (+)", strings.Join(servers, " and "), d)
		return d
	}
	// The same Service twice: the same original tuple, a clash the kernel resolves.
	// The race happens (clash_resolve rises) and drops nothing.
	if d := race("198.19.0.10:53", "198.19.0.10:53"); d.InsertFailed != 0 || d.Drop != 0 || d.ClashResolve == 0 {
		t.Errorf("one Service raced with itself: %s, want clashes resolved and no failed insert", d)
	}
	// Two Services sharing the backends: reply tuples clash when both pick the same one.
	if d := race("198.19.0.10:53", "198.19.0.11:53"); d.InsertFailed == 0 || d.Drop == 0 {
		t.Errorf("two Services raced: %s, want insert_failed and drop to rise", d)
	}
}
