package collect

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/netdoctor/netdoctor/internal/command"
	"github.com/netdoctor/netdoctor/internal/facts"
	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

// topology is a small node built in fresh namespaces: a "node" namespace
// with an uplink veth pair, a bridge with a veth port whose peer sits in a
// "pod" namespace, a VXLAN device with FDB and neighbour entries, routes in
// two tables, a policy rule, namespace sysctls and netfilter rules of every
// kind.
type topology struct {
	node, pod string
}

func buildTopology(t *testing.T) topology {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "ip")
	testutil.RequireProgram(t, "bridge")
	testutil.RequireProgram(t, "tc")
	node := testutil.NewNetns(t, "cnode")
	pod := testutil.NewNetns(t, "cpod")
	run := func(ns string, args ...string) { testutil.MustRun(t, ns, args[0], args[1:]...) }

	// Uplink: a veth pair inside the node namespace (u0 carries the underlay address).
	run(node, "ip", "link", "add", "u0", "type", "veth", "peer", "name", "u1")
	run(node, "ip", "addr", "add", "198.18.10.1/24", "dev", "u0")
	run(node, "ip", "link", "set", "u0", "up")
	run(node, "ip", "link", "set", "u1", "up")
	run(node, "tc", "qdisc", "add", "dev", "u0", "root", "handle", "1:", "pfifo", "limit", "10")
	// Bridge with a veth port; the port's peer is the pod's eth0.
	run(node, "ip", "link", "add", "br0", "type", "bridge")
	run(node, "ip", "link", "set", "br0", "mtu", "1450")
	run(node, "ip", "addr", "add", "198.18.21.1/24", "dev", "br0")
	run(node, "ip", "-6", "addr", "add", "fd00:18::1/64", "dev", "br0", "nodad")
	run(node, "ip", "link", "set", "br0", "up")
	run(node, "ip", "link", "add", "vp0", "mtu", "1450", "type", "veth", "peer", "name", "eth0", "netns", pod)
	run(node, "ip", "link", "set", "vp0", "master", "br0")
	run(node, "ip", "link", "set", "vp0", "up")
	run(pod, "ip", "addr", "add", "198.18.21.2/24", "dev", "eth0")
	run(pod, "ip", "link", "set", "eth0", "up")
	// VXLAN on UDP 8472 over u0, no learning, with its FDB and neighbour.
	run(node, "ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "local", "198.18.10.1", "dev", "u0", "dstport", "8472", "nolearning")
	run(node, "ip", "link", "set", "vx0", "mtu", "1450")
	run(node, "ip", "addr", "add", "198.18.20.0/32", "dev", "vx0")
	run(node, "ip", "link", "set", "vx0", "up")
	run(node, "bridge", "fdb", "append", "02:aa:bb:cc:dd:01", "dev", "vx0", "dst", "198.18.10.2", "self", "permanent")
	run(node, "ip", "neigh", "add", "198.18.22.0", "lladdr", "02:aa:bb:cc:dd:01", "dev", "vx0", "nud", "permanent")
	// Routes in main and table 100 (v4 and v6), and a rule choosing table 100.
	run(node, "ip", "route", "add", "198.18.30.0/24", "via", "198.18.10.2", "dev", "u0", "proto", "static", "metric", "5")
	run(node, "ip", "route", "add", "198.18.22.0/24", "via", "198.18.22.0", "dev", "vx0", "onlink", "table", "100", "mtu", "1400", "src", "198.18.20.0")
	run(node, "ip", "route", "add", "blackhole", "198.18.50.0/24", "table", "100")
	run(node, "ip", "-6", "route", "add", "fd00:19::/64", "dev", "br0", "table", "100")
	run(node, "ip", "rule", "add", "from", "198.18.21.0/24", "fwmark", "0x10/0xff", "lookup", "100", "pref", "100")
	// kube-proxy's IPVS mode binds Service addresses to kube-ipvs0 (a dummy
	// device; this kernel has no dummy driver, a bridge stands in).
	run(node, "ip", "link", "add", "kube-ipvs0", "type", "bridge")
	run(node, "ip", "addr", "add", "198.19.0.1/32", "dev", "kube-ipvs0")
	run(node, "ip", "addr", "add", "198.19.0.10/32", "dev", "kube-ipvs0")
	// Namespace sysctls (never the root namespace's).
	err := namespace.Do(testutil.Path(node), func() error {
		for k, v := range map[string]string{
			"net/ipv4/ip_forward":                 "1",
			"net/ipv6/conf/all/forwarding":        "1",
			"net/ipv4/conf/all/rp_filter":         "2",
			"net/ipv4/conf/u0/rp_filter":          "1",
			"net/ipv4/conf/all/route_localnet":    "1",
			"net/ipv4/ip_local_port_range":        "20000 20999",
			"net/bridge/bridge-nf-call-iptables":  "0",
			"net/bridge/bridge-nf-call-ip6tables": "0",
		} {
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("set sysctls in %s: %v", node, err)
	}
	return topology{node: node, pod: pod}
}

func findLink(t *testing.T, s *facts.NodeSnapshot, name string) facts.Link {
	t.Helper()
	for _, l := range s.Links {
		if l.Name == name {
			return l
		}
	}
	t.Fatalf("link %s not collected; links: %+v", name, s.Links)
	return facts.Link{}
}

func TestCollectTopology(t *testing.T) {
	topo := buildTopology(t)
	testutil.RequireProgram(t, "iptables-nft")
	testutil.RequireProgram(t, "iptables-legacy")
	testutil.RequireProgram(t, "nft")
	testutil.RequireProgram(t, "ipset")
	testutil.MustRun(t, topo.node, "iptables-nft", "-A", "INPUT", "-p", "udp", "--dport", "8472", "-j", "DROP")
	testutil.MustRun(t, topo.node, "iptables-legacy", "-t", "nat", "-A", "POSTROUTING", "-s", "198.18.21.0/24", "-j", "MASQUERADE")
	testutil.MustRun(t, topo.node, "nft", "add table inet ndtest; add chain inet ndtest input { type filter hook input priority 0; policy accept; }; add rule inet ndtest input udp dport 4789 counter drop")
	testutil.MustRun(t, topo.node, "ipset", "create", "ndtest", "hash:ip")
	testutil.MustRun(t, topo.node, "ipset", "add", "ndtest", "198.18.21.2")

	// A listening TCP socket created inside the node namespace.
	var ln net.Listener
	err := namespace.Do(testutil.Path(topo.node), func() error {
		var err error
		ln, err = net.Listen("tcp", "198.18.10.1:18080")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()

	ctx := context.Background()
	s, err := Collect(ctx, Options{Netns: topo.node, NodeName: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	podSnap, err := Collect(ctx, Options{Netns: topo.pod, Sections: []string{SectionLinks}})
	if err != nil {
		t.Fatal(err)
	}

	if os.Getenv("NETDOCTOR_TEST_DUMP") != "" {
		t.Log(dumpJSON(s))
	}
	if s.Version != facts.NodeSnapshotVersion || s.Node != "node-1" || s.Netns != topo.node || s.Kernel == "" {
		t.Errorf("header: version %q node %q netns %q kernel %q", s.Version, s.Node, s.Netns, s.Kernel)
	}
	if want := netnsInode(testutil.Path(topo.node)); s.NetnsInode != want || want == 0 {
		t.Errorf("netns inode %d, want %d", s.NetnsInode, want)
	}

	t.Run("links", func(t *testing.T) {
		if len(s.Links) != 7 { // lo u0 u1 br0 vp0 vx0 kube-ipvs0
			t.Errorf("%d links, want 7: %+v", len(s.Links), s.Links)
		}
		br := findLink(t, s, "br0")
		if br.Type != "bridge" || br.MTU != 1450 || !br.Up || br.Bridge == nil || br.Bridge.VlanFiltering {
			t.Errorf("br0: %+v", br)
		}
		vp := findLink(t, s, "vp0")
		podEth := findLink(t, podSnap, "eth0")
		if vp.Type != "veth" || vp.Master != "br0" || vp.MasterIndex != br.Index || vp.MTU != 1450 {
			t.Errorf("vp0: %+v", vp)
		}
		if vp.PeerIndex != podEth.Index || vp.PeerNetnsID < 0 {
			t.Errorf("vp0 peer: index %d netnsid %d, want index %d (pod eth0) in another netns", vp.PeerIndex, vp.PeerNetnsID, podEth.Index)
		}
		if podEth.PeerIndex != vp.Index {
			t.Errorf("pod eth0 peer index %d, want %d", podEth.PeerIndex, vp.Index)
		}
		u0, u1 := findLink(t, s, "u0"), findLink(t, s, "u1")
		if u0.PeerIndex != u1.Index || u0.PeerNetnsID != -1 {
			t.Errorf("u0 peer: index %d netnsid %d, want %d in the same netns (-1)", u0.PeerIndex, u0.PeerNetnsID, u1.Index)
		}
		if u0.State != "up" || !slices.Contains(u0.Flags, "up") || !slices.Contains(u0.Flags, "lower_up") || u0.MAC == "" {
			t.Errorf("u0 state/flags/mac: %+v", u0)
		}
		vx := findLink(t, s, "vx0")
		want := facts.VXLAN{VNI: 42, Local: "198.18.10.1", Port: 8472, Device: "u0", DeviceIndex: u0.Index, Learning: false}
		if vx.Type != "vxlan" || vx.VXLAN == nil || *vx.VXLAN != want || vx.MTU != 1450 {
			t.Errorf("vx0: %+v vxlan %+v, want %+v", vx, vx.VXLAN, want)
		}
		if u0.Stats == nil {
			t.Errorf("u0 has no statistics")
		}
		lo := findLink(t, s, "lo")
		if lo.Type != "device" || !slices.Contains(lo.Flags, "loopback") {
			t.Errorf("lo: %+v", lo)
		}
	})

	t.Run("addresses", func(t *testing.T) {
		want := []facts.Address{
			{Link: "lo", CIDR: "127.0.0.1/8", Family: 4, Scope: "host"},
			{Link: "u0", CIDR: "198.18.10.1/24", Family: 4, Scope: "global"},
			{Link: "br0", CIDR: "198.18.21.1/24", Family: 4, Scope: "global"},
			{Link: "vx0", CIDR: "198.18.20.0/32", Family: 4, Scope: "global"},
			{Link: "kube-ipvs0", CIDR: "198.19.0.1/32", Family: 4, Scope: "global"},
			{Link: "kube-ipvs0", CIDR: "198.19.0.10/32", Family: 4, Scope: "global"},
			{Link: "br0", CIDR: "fd00:18::1/64", Family: 6, Scope: "global"},
			{Link: "lo", CIDR: "::1/128", Family: 6, Scope: "host"},
		}
		for _, w := range want {
			if !slices.Contains(s.Addresses, w) {
				t.Errorf("address %+v missing from %+v", w, s.Addresses)
			}
		}
		for _, a := range s.Addresses {
			if a.Family == 4 && !slices.Contains(want, a) {
				t.Errorf("unexpected address %+v", a)
			}
		}
	})

	t.Run("routes", func(t *testing.T) {
		want := []facts.Route{
			{Table: 254, Type: "unicast", Dst: "198.18.30.0/24", Gateway: "198.18.10.2", Link: "u0", Protocol: "static", Scope: "global", Metric: 5, Family: 4},
			{Table: 254, Type: "unicast", Dst: "198.18.10.0/24", Link: "u0", Src: "198.18.10.1", Protocol: "kernel", Scope: "link", Family: 4},
			{Table: 100, Type: "unicast", Dst: "198.18.22.0/24", Gateway: "198.18.22.0", Link: "vx0", Src: "198.18.20.0", Protocol: "boot", Scope: "global", OnLink: true, MTU: 1400, Family: 4},
			{Table: 100, Type: "blackhole", Dst: "198.18.50.0/24", Protocol: "boot", Scope: "global", Family: 4},
			{Table: 100, Type: "unicast", Dst: "fd00:19::/64", Link: "br0", Protocol: "boot", Scope: "global", Metric: 1024, Family: 6},
			{Table: 255, Type: "local", Dst: "198.18.10.1/32", Link: "u0", Src: "198.18.10.1", Protocol: "kernel", Scope: "host", Family: 4},
		}
		for _, w := range want {
			if !slices.ContainsFunc(s.Routes, func(r facts.Route) bool { return routeEqual(r, w) }) {
				t.Errorf("route %+v missing; routes:\n%s", w, dumpJSON(s.Routes))
			}
		}
	})

	t.Run("rules", func(t *testing.T) {
		w := facts.PolicyRule{Priority: 100, Src: "198.18.21.0/24", Table: 100, Mark: 0x10, Mask: 0xff, Family: 4, Action: "lookup"}
		if !slices.Contains(s.Rules, w) {
			t.Errorf("rule %+v missing from %+v", w, s.Rules)
		}
		if n := len(s.Rules); n != 6 { // v4: 0 100 32766 32767; v6: 0 32766
			t.Errorf("%d rules, want 6: %+v", n, s.Rules)
		}
	})

	t.Run("neighbors and fdb", func(t *testing.T) {
		wn := facts.Neighbor{Link: "vx0", IP: "198.18.22.0", MAC: "02:aa:bb:cc:dd:01", State: "permanent", Family: 4}
		if !slices.ContainsFunc(s.Neighbors, func(n facts.Neighbor) bool {
			return n.Link == wn.Link && n.IP == wn.IP && n.MAC == wn.MAC && n.State == wn.State && n.Family == 4
		}) {
			t.Errorf("neighbour %+v missing from %+v", wn, s.Neighbors)
		}
		wf := facts.FDBEntry{Link: "vx0", MAC: "02:aa:bb:cc:dd:01", Dst: "198.18.10.2", State: "permanent", Self: true}
		if !slices.Contains(s.FDB, wf) {
			t.Errorf("fdb entry %+v missing from\n%s", wf, dumpJSON(s.FDB))
		}
		// The bridge port's own MAC is a permanent master entry on br0.
		vp := findLink(t, s, "vp0")
		if !slices.ContainsFunc(s.FDB, func(e facts.FDBEntry) bool {
			return e.Link == "vp0" && e.MAC == vp.MAC && e.Master == "br0" && e.State == "permanent"
		}) {
			t.Errorf("fdb has no permanent entry for vp0 %s on br0:\n%s", vp.MAC, dumpJSON(s.FDB))
		}
	})

	t.Run("qdiscs", func(t *testing.T) {
		if !slices.ContainsFunc(s.Qdiscs, func(q facts.Qdisc) bool {
			return q.Link == "u0" && q.Kind == "pfifo" && q.Handle == "1:" && q.Parent == "root"
		}) {
			t.Errorf("pfifo 1: on u0 missing from %+v", s.Qdiscs)
		}
	})

	t.Run("sysctls", func(t *testing.T) {
		want := map[string]string{
			"net.ipv4.ip_forward":                  "1",
			"net.ipv6.conf.all.forwarding":         "1",
			"net.ipv4.conf.all.rp_filter":          "2",
			"net.ipv4.conf.u0.rp_filter":           "1",
			"net.ipv4.conf.u1.rp_filter":           "0",
			"net.ipv4.conf.all.route_localnet":     "1",
			"net.ipv4.conf.default.route_localnet": "0",
			"net.ipv4.ip_local_port_range":         "20000 20999",
			"net.bridge.bridge-nf-call-iptables":   "0",
			"net.bridge.bridge-nf-call-ip6tables":  "0",
		}
		for k, v := range want {
			if got, ok := s.Sysctls[k]; !ok || got != v {
				t.Errorf("sysctl %s = %q (present %v), want %q", k, got, ok, v)
			}
		}
		for _, k := range []string{"net.netfilter.nf_conntrack_max", "net.netfilter.nf_conntrack_count", "net.core.netdev_max_backlog"} {
			if _, ok := s.Sysctls[k]; !ok {
				t.Errorf("sysctl %s missing (errors: %v)", k, s.Errors)
			}
		}
	})

	t.Run("conntrack softnet sockets", func(t *testing.T) {
		if s.Conntrack == nil || s.Conntrack.Max == 0 || len(s.Conntrack.PerCPU) == 0 {
			t.Errorf("conntrack: %+v (errors %v)", s.Conntrack, s.Errors)
		}
		if len(s.Softnet) == 0 {
			t.Errorf("no softnet statistics")
		}
		if !slices.ContainsFunc(s.Sockets, func(so facts.Socket) bool {
			return so.Proto == "tcp" && so.State == "LISTEN" && so.Local == "198.18.10.1:18080"
		}) {
			t.Errorf("listening socket 198.18.10.1:18080 missing from %+v", s.Sockets)
		}
		if s.SocketStats == nil || s.SocketStats.ByState["tcp LISTEN"] != 1 {
			t.Errorf("socket stats: %+v", s.SocketStats)
		}
	})

	t.Run("netfilter", func(t *testing.T) {
		nf := s.Netfilter
		if !strings.Contains(nf.IptablesNft, "-A INPUT -p udp -m udp --dport 8472 -j DROP") {
			t.Errorf("iptables-nft-save lacks the rule:\n%s", nf.IptablesNft)
		}
		if !strings.Contains(nf.IptablesLegacy, "-A POSTROUTING -s 198.18.21.0/24 -j MASQUERADE") {
			t.Errorf("iptables-legacy-save lacks the rule:\n%s", nf.IptablesLegacy)
		}
		if nf.Backend != "both" {
			t.Errorf("backend %q, want both", nf.Backend)
		}
		var ruleset struct {
			Nftables []map[string]json.RawMessage `json:"nftables"`
		}
		if err := json.Unmarshal([]byte(nf.NftJSON), &ruleset); err != nil {
			t.Fatalf("nft -j output is not JSON: %v\n%s", err, nf.NftJSON)
		}
		found := false
		for _, obj := range ruleset.Nftables {
			if raw, ok := obj["table"]; ok && strings.Contains(string(raw), `"name": "ndtest"`) {
				found = true
			}
		}
		if !found || !strings.Contains(nf.NftJSON, `"dport"`) || !strings.Contains(nf.NftJSON, "4789") {
			t.Errorf("nft ruleset lacks table inet ndtest and its rule:\n%s", nf.NftJSON)
		}
		if !strings.Contains(nf.Ipsets, "create ndtest hash:ip") || !strings.Contains(nf.Ipsets, "add ndtest 198.18.21.2") {
			t.Errorf("ipset save:\n%s", nf.Ipsets)
		}
		for k := range s.Errors {
			if strings.HasPrefix(k, "netfilter") {
				t.Errorf("netfilter error %s: %s", k, s.Errors[k])
			}
		}
	})

	t.Run("ipvs", func(t *testing.T) {
		// This kernel has no IPVS: the dump is skipped with the reason, and
		// kube-ipvs0's addresses are still reported.
		if _, err := os.Stat("/proc/net/ip_vs"); err == nil {
			t.Skip("this kernel has IPVS; the test expects a kernel without it")
		}
		if !strings.Contains(s.Skipped[SectionIPVS], "no IPVS") {
			t.Errorf("IPVS not skipped with a reason: skipped %v errors %v", s.Skipped, s.Errors)
		}
		if s.IPVS == nil || !slices.Equal(s.IPVS.KubeIPVSAddresses, []string{"198.19.0.1/32", "198.19.0.10/32"}) || len(s.IPVS.Services) != 0 {
			t.Errorf("IPVS facts: %+v", s.IPVS)
		}
	})

	t.Run("no unexpected errors", func(t *testing.T) {
		for k, v := range s.Errors {
			t.Errorf("error %s: %s", k, v)
		}
	})
}

// routeEqual compares the fields a test sets.
func routeEqual(a, b facts.Route) bool {
	a.NextHops, b.NextHops = nil, nil
	return a.Table == b.Table && a.Type == b.Type && a.Dst == b.Dst && a.Gateway == b.Gateway &&
		a.Link == b.Link && a.Src == b.Src && a.Protocol == b.Protocol && a.Scope == b.Scope &&
		a.Metric == b.Metric && a.OnLink == b.OnLink && a.MTU == b.MTU && a.Family == b.Family
}

func dumpJSON(v any) string {
	b, _ := json.MarshalIndent(v, "", " ")
	return string(b)
}

func TestCollectUnknownNetns(t *testing.T) {
	for _, spec := range []string{"ndt-no-such-netns", "/nonexistent/netns", "pid:999999999"} {
		_, err := Collect(context.Background(), Options{Netns: spec})
		if err == nil || !strings.Contains(err.Error(), spec) {
			t.Errorf("Collect(%q): error %v, want one naming the namespace", spec, err)
		}
	}
	if _, err := Collect(context.Background(), Options{Sections: []string{"bogus"}}); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("unknown section: error %v", err)
	}
}

// TestCollectFakeProcRoot points every root at empty or hand-made trees:
// each section that cannot read its files says so in Errors, nothing panics.
func TestCollectFakeProcRoot(t *testing.T) {
	empty := t.TempDir()
	s, err := Collect(context.Background(), Options{
		ProcRoot: empty, SysRoot: empty, RootDir: empty,
		Sections: []string{SectionSysctls, SectionConntrack, SectionSoftnet, SectionSockets, SectionProcesses, SectionFiles, SectionKernel},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{
		"sysctl net.ipv4.ip_forward", "sysctl net.bridge.bridge-nf-call-iptables", "sysctl net.ipv4.conf",
		"sysctl net.core.netdev_max_backlog", SectionConntrack, SectionSoftnet, "sockets.tcp", "sockets.udp", SectionKernel,
	} {
		if s.Errors[key] == "" {
			t.Errorf("no error for %s; errors: %v", key, s.Errors)
		}
	}
	if !strings.Contains(s.Errors["sysctl net.bridge.bridge-nf-call-iptables"], "br_netfilter is not loaded") {
		t.Errorf("bridge-nf error does not name br_netfilter: %q", s.Errors["sysctl net.bridge.bridge-nf-call-iptables"])
	}
	if len(s.Processes) != 0 || s.Files != nil || s.Conntrack != nil || len(s.Sysctls) != 0 {
		t.Errorf("facts made up from an empty tree: %+v", s)
	}
	if _, err := json.Marshal(s); err != nil {
		t.Fatal(err)
	}
}

// TestCollectProcessesAndFiles runs the processes and files collectors on
// hand-made trees laid out like /proc and / on a flannel node.
func TestCollectProcessesAndFiles(t *testing.T) {
	proc, root := t.TempDir(), t.TempDir()
	cfgRoot := t.TempDir()
	mkfile := func(p, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mkproc := func(pid int, comm string, argv []string, netns string) string {
		dir := filepath.Join(proc, strconv.Itoa(pid))
		mkfile(filepath.Join(dir, "comm"), comm+"\n")
		mkfile(filepath.Join(dir, "cmdline"), strings.Join(argv, "\x00")+"\x00")
		if err := os.MkdirAll(filepath.Join(dir, "ns"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(netns, filepath.Join(dir, "ns", "net")); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	kp := mkproc(100, "kube-proxy", []string{"/usr/local/bin/kube-proxy", "--config=/var/lib/kube-proxy/config.conf", "--hostname-override=node-1"}, "net:[4026531840]")
	if err := os.Symlink(cfgRoot, filepath.Join(kp, "root")); err != nil {
		t.Fatal(err)
	}
	mkfile(filepath.Join(cfgRoot, "var/lib/kube-proxy/config.conf"), "clusterCIDR: 198.18.128.0/17\nmode: iptables\n")
	mkproc(200, "flanneld", []string{"/opt/bin/flanneld", "--ip-masq", "--kube-subnet-mgr"}, "net:[4026531840]")
	mkproc(300, "netdoctor-k8s", []string{"/usr/bin/netdoctor-k8s", "kube-proxy", "--cluster-cidr", "198.18.128.0/17"}, "net:[4026532000]")
	mkproc(400, "bash", []string{"bash"}, "net:[4026531840]")
	// A kube-proxy whose config cannot be read.
	mkproc(500, "kube-proxy", []string{"kube-proxy", "--config", "/missing.conf"}, "net:[4026531840]")
	mkfile(filepath.Join(root, FlannelSubnetFile), "FLANNEL_NETWORK=198.18.128.0/17\nFLANNEL_SUBNET=198.18.130.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
	mkfile(filepath.Join(root, CNIConfDir, "10-flannel.conflist"), `{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel"}]}`)
	mkfile(filepath.Join(root, CNIConfDir, "README"), "not a config")

	c := &collector{opts: Options{ProcRoot: proc, RootDir: root}, snap: &facts.NodeSnapshot{NetnsInode: 4026531840}}
	c.collectProcesses()
	c.collectFiles()

	if len(c.snap.Processes) != 4 {
		t.Fatalf("%d processes, want 4: %+v", len(c.snap.Processes), c.snap.Processes)
	}
	p := c.snap.Processes[0]
	if p.PID != 100 || p.Name != "kube-proxy" || !p.SameNetns || p.NetnsInode != 4026531840 ||
		p.Config["/var/lib/kube-proxy/config.conf"] != "clusterCIDR: 198.18.128.0/17\nmode: iptables\n" || len(p.Cmdline) != 3 {
		t.Errorf("kube-proxy: %+v", p)
	}
	if p := c.snap.Processes[1]; p.Name != "flanneld" || !slices.Contains(p.Cmdline, "--ip-masq") {
		t.Errorf("flanneld: %+v", p)
	}
	if p := c.snap.Processes[2]; p.Name != "kube-proxy" || p.SameNetns || p.NetnsInode != 4026532000 {
		t.Errorf("multi-call kube-proxy in another netns: %+v", p)
	}
	if c.snap.Errors["processes.kube-proxy[500].config"] == "" {
		t.Errorf("unreadable kube-proxy config not reported: %v", c.snap.Errors)
	}
	if c.snap.Flannel == nil || c.snap.Flannel.Subnet != "198.18.130.1/24" || c.snap.Flannel.MTU != 1450 {
		t.Errorf("flannel: %+v", c.snap.Flannel)
	}
	if len(c.snap.Files) != 2 || !strings.Contains(c.snap.Files[CNIConfDir+"/10-flannel.conflist"], "flannel") {
		t.Errorf("files: %v", c.snap.Files)
	}
}

// startProgram starts a program inside the namespace and kills it (by PID)
// on cleanup.
func startProgram(t testing.TB, ns, name string, args ...string) int {
	t.Helper()
	var cmd *exec.Cmd
	err := namespace.Do(testutil.Path(ns), func() error {
		cmd = exec.Command(name, args...)
		return cmd.Start()
	})
	if err != nil {
		t.Fatalf("start %s in %s: %v", name, ns, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd.Process.Pid
}

func TestCollectByPID(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetns(t, "cpid")
	testutil.MustRun(t, ns, "ip", "link", "add", "pa", "type", "veth", "peer", "name", "pb")
	// The process is a copy of sleep named kube-proxy, so the processes
	// section finds it in the target namespace.
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("sleep not installed")
	}
	b, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	kp := filepath.Join(t.TempDir(), "kube-proxy")
	if err := os.WriteFile(kp, b, 0o755); err != nil {
		t.Fatal(err)
	}
	pid := startProgram(t, ns, kp, "300")
	for _, spec := range []string{"pid:" + strconv.Itoa(pid), strconv.Itoa(pid)} {
		s, err := Collect(context.Background(), Options{Netns: spec, Sections: []string{SectionLinks, SectionSysctls, SectionProcesses}})
		if err != nil {
			t.Fatal(err)
		}
		findLink(t, s, "pa")
		findLink(t, s, "pb")
		if s.NetnsInode != netnsInode(testutil.Path(ns)) {
			t.Errorf("%s: netns inode %d, want %d", spec, s.NetnsInode, netnsInode(testutil.Path(ns)))
		}
		if _, ok := s.Sysctls["net.ipv4.conf.pa.rp_filter"]; !ok {
			t.Errorf("%s: per-interface sysctls not read inside the namespace: %v", spec, s.Sysctls)
		}
		i := slices.IndexFunc(s.Processes, func(p facts.Process) bool { return p.PID == pid })
		if i < 0 {
			t.Fatalf("%s: process %d not collected: %+v", spec, pid, s.Processes)
		}
		if p := s.Processes[i]; p.Name != "kube-proxy" || !p.SameNetns || p.NetnsInode != s.NetnsInode || !slices.Equal(p.Cmdline, []string{kp, "300"}) {
			t.Errorf("%s: process %+v", spec, p)
		}
	}
}

// BenchmarkCollect collects a whole snapshot of a namespace shaped like a
// small Kubernetes node: 20 veth pairs with addresses and routes, and a
// kube-proxy-like iptables-nft ruleset of 200 Services (about 1,400 rules).
func BenchmarkCollect(b *testing.B) {
	testutil.RequireRoot(b)
	testutil.RequireProgram(b, "iptables-nft-restore")
	ns := testutil.NewNetns(b, "cbench")
	for i := range 20 {
		va, vb := "va"+strconv.Itoa(i), "vb"+strconv.Itoa(i)
		testutil.MustRun(b, ns, "ip", "link", "add", va, "type", "veth", "peer", "name", vb)
		testutil.MustRun(b, ns, "ip", "link", "set", va, "up")
		testutil.MustRun(b, ns, "ip", "link", "set", vb, "up")
		testutil.MustRun(b, ns, "ip", "addr", "add", "198.18.60."+strconv.Itoa(i+1)+"/32", "dev", va)
		testutil.MustRun(b, ns, "ip", "route", "add", "198.18.61."+strconv.Itoa(i)+"/32", "dev", va, "table", "100")
	}
	var rules strings.Builder
	rules.WriteString("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n")
	for i := range 200 {
		rules.WriteString(":KUBE-SVC-" + strconv.Itoa(i) + " - [0:0]\n:KUBE-SEP-" + strconv.Itoa(i) + " - [0:0]\n")
	}
	rules.WriteString("-A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -j KUBE-SERVICES\n")
	for i := range 200 {
		svc, sep := "KUBE-SVC-"+strconv.Itoa(i), "KUBE-SEP-"+strconv.Itoa(i)
		vip := "198.19." + strconv.Itoa(i/250) + "." + strconv.Itoa(i%250+1)
		ep := "198.18.70." + strconv.Itoa(i%250+1)
		rules.WriteString("-A KUBE-SERVICES -d " + vip + "/32 -p tcp -m comment --comment \"ns/svc" + strconv.Itoa(i) + "\" -m tcp --dport 80 -j " + svc + "\n")
		rules.WriteString("-A " + svc + " ! -s 198.18.128.0/17 -d " + vip + "/32 -p tcp -m tcp --dport 80 -j MARK --set-xmark 0x4000/0x4000\n")
		rules.WriteString("-A " + svc + " -m statistic --mode random --probability 0.5 -j " + sep + "\n")
		rules.WriteString("-A " + svc + " -j " + sep + "\n")
		rules.WriteString("-A " + sep + " -s " + ep + "/32 -j MARK --set-xmark 0x4000/0x4000\n")
		rules.WriteString("-A " + sep + " -p tcp -m tcp -j DNAT --to-destination " + ep + ":8080\n")
	}
	rules.WriteString("-A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE\nCOMMIT\n")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if _, err := command.Run(ctx, command.Cmd{Name: "iptables-nft-restore", Netns: testutil.Path(ns), Stdin: []byte(rules.String())}); err != nil {
		b.Fatal(err)
	}
	s, err := Collect(ctx, Options{Netns: ns})
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("snapshot: %d links, %d routes, %d bytes of iptables-nft-save, errors %v", len(s.Links), len(s.Routes), len(s.Netfilter.IptablesNft), s.Errors)
	groups := []struct {
		name     string
		sections []string
	}{
		{"all", nil},
		{"netlink", []string{SectionLinks, SectionAddresses, SectionRoutes, SectionRules, SectionNeighbors, SectionFDB, SectionQdiscs}},
		{"procfs", []string{SectionSysctls, SectionConntrack, SectionSoftnet, SectionSockets}},
		{"netfilter", []string{SectionNetfilter}},
		{"ipvs", []string{SectionIPVS}},
		{"processes", []string{SectionProcesses, SectionFiles, SectionKernel}},
	}
	for _, g := range groups {
		b.Run(g.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := Collect(ctx, Options{Netns: ns, Sections: g.sections}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestCollectMissingPrograms runs the netfilter section with an empty PATH:
// every dump is an Errors entry naming the program, nothing fails.
func TestCollectMissingPrograms(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	s, err := Collect(context.Background(), Options{Sections: []string{SectionNetfilter}})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range netfilterDumps {
		if msg := s.Errors[d.section]; !strings.Contains(msg, d.name) || !strings.Contains(msg, "not installed") {
			t.Errorf("%s: error %q, want one saying %s is not installed", d.section, msg, d.name)
		}
	}
	if s.Netfilter.Backend != "" || s.Netfilter.NftJSON != "" {
		t.Errorf("netfilter facts without programs: %+v", s.Netfilter)
	}
}
