package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netdoctor/netdoctor/internal/lab/proc"
	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string
	}{
		{"defaults", func(*Config) {}, ""},
		{"bad name", func(c *Config) { c.Name = "Lab-1" }, "lab name"},
		{"long name", func(c *Config) { c.Name = "abcdefghi" }, "lab name"},
		{"bad mode", func(c *Config) { c.ProxyMode = "ipvs" }, "proxy mode"},
		{"overlap", func(c *Config) { c.ServiceCIDR = netip.MustParsePrefix("198.18.128.0/20") }, "overlaps"},
		{"not network", func(c *Config) { c.ClusterCIDR = netip.MustParsePrefix("198.18.128.1/17") }, "not a network address"},
		{"ipv6", func(c *Config) { c.ServiceCIDR = netip.MustParsePrefix("fd00::/108") }, "IPv4"},
		{"zero nodes", func(c *Config) { c.Nodes = -1 }, "node count"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Config{}.WithDefaults()
			tt.mod(&c)
			err := c.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestCheckOverlap(t *testing.T) {
	c := Config{}.WithDefaults()
	tests := []struct {
		name string
		hn   HostNet
		want []string
	}{
		{"clean", HostNet{Addrs: []HostAddr{{"eth0", netip.MustParsePrefix("192.0.2.2/24")}}, Routes: []HostRoute{{"eth0", netip.MustParsePrefix("192.0.2.0/24"), 254}}}, nil},
		{"address in pods", HostNet{Addrs: []HostAddr{{"eth1", netip.MustParsePrefix("198.18.200.5/25")}}}, []string{"pod (cluster) CIDR 198.18.128.0/17 overlaps host address 198.18.200.5/25 on eth1"}},
		{"wide route", HostNet{Routes: []HostRoute{{"eth0", netip.MustParsePrefix("198.0.0.0/8"), 254}}}, []string{"underlay network", "pod (cluster) CIDR", "service CIDR"}},
		{"local table ignored", HostNet{Routes: []HostRoute{{"eth0", netip.MustParsePrefix("198.19.0.1/32"), 255}}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckOverlap(&tt.hn, c.Ranges(), "")
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var oe *OverlapError
			if !errors.As(err, &oe) {
				t.Fatalf("err = %v, want *OverlapError", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
}

// TestCheckHostRefusesOverlap gives a fresh namespace as "the host", with an address inside
// the lab's service CIDR: the check must refuse and name it.
func TestCheckHostRefusesOverlap(t *testing.T) {
	ns := testutil.NewNetns(t, "ovl")
	testutil.MustRun(t, ns, "ip", "link", "add", "h0", "type", "veth", "peer", "name", "h1")
	testutil.MustRun(t, ns, "ip", "addr", "add", "198.19.5.1/24", "dev", "h0")
	testutil.MustRun(t, ns, "ip", "link", "set", "h0", "up")
	testutil.MustRun(t, ns, "ip", "link", "set", "h1", "up")
	c := Config{}.WithDefaults()
	err := c.CheckHost(testutil.Path(ns))
	if err == nil {
		t.Fatal("overlap not refused")
	}
	for _, w := range []string{"refusing", "service CIDR 198.19.0.0/16", "198.19.5.1/24 on h0", "route 198.19.5.0/24 dev h0"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not say %q", err, w)
		}
	}
	// With ranges moved away the same host is accepted.
	c.ServiceCIDR = netip.MustParsePrefix("198.18.96.0/20")
	if err := c.CheckHost(testutil.Path(ns)); err != nil {
		t.Fatalf("non-overlapping config refused: %v", err)
	}
}

func TestBuildTopologyAndDown(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "ping")
	c := Config{Name: "ttopo", Nodes: 2, StateRoot: t.TempDir(), UnderlayCIDR: netip.MustParsePrefix("198.18.1.0/24")}.WithDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = Down(c.Name, c.StateRoot) })
	st := &State{Config: c}
	if err := BuildTopology(c, st); err != nil {
		t.Fatal(err)
	}
	// node1 reaches node2, the external host and the root address over the bridge.
	for _, dst := range []string{c.NodeIP(2).String(), c.ExtIP().String(), c.RootIP().String(), c.CPIP().String()} {
		testutil.MustRun(t, c.NodeNetns(1), "ping", "-c1", "-W2", dst)
	}
	// The root namespace reaches the control plane namespace through its one link.
	testutil.MustRun(t, "", "ping", "-c1", "-W2", "-I", RootLinkName(c.Name), c.CPIP().String())
	checkRootPortGuard(t, c)
	if v, err := GetSysctl(c.NodeNetns(1), "net.ipv4.ip_forward"); err != nil || v != "1" {
		t.Fatalf("ip_forward in node1 = %q, %v", v, err)
	}
	if v, err := GetSysctl(c.ExtNetns(), "net.ipv4.ip_forward"); err != nil || v != "0" {
		t.Fatalf("ip_forward in ext = %q, %v (only nodes forward)", v, err)
	}
	if err := c.CheckHost(""); err == nil {
		t.Fatal("a second lab on the same ranges was not refused")
	}

	rep, err := Down(c.Name, c.StateRoot)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Namespaces) != 2+3+1 {
		t.Errorf("deleted %v, want 6 namespaces", rep.Namespaces)
	}
	if left, _ := ListOwnedNetns(c.Name); len(left) != 0 {
		t.Fatalf("namespaces left: %v", left)
	}
	if _, err := testutil.Run(t, "", "ip", "link", "show", RootLinkName(c.Name)); err == nil {
		t.Fatal("root link left")
	}
	if namespace.Exists(c.HubNetns()) {
		t.Fatal("hub left")
	}
	if _, err := Down(c.Name, c.StateRoot); err != nil {
		t.Fatalf("second down not idempotent: %v", err)
	}
}

// TestDownAfterCrash removes a lab whose state directory is gone (a crash, or a wiped /var/lib)
// and whose process was never recorded: Down must find the namespaces by their prefix, the
// process by its namespace, and the root link by its name.
func TestDownAfterCrash(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "sleep")
	c := Config{Name: "tcrash", Nodes: 1, StateRoot: t.TempDir(), UnderlayCIDR: netip.MustParsePrefix("198.18.2.0/24")}.WithDefaults()
	t.Cleanup(func() { _, _ = Down(c.Name, c.StateRoot) })
	st := &State{Config: c}
	if err := BuildTopology(c, st); err != nil {
		t.Fatal(err)
	}
	info, err := proc.Start(proc.Spec{Name: "stray", Path: "sleep", Args: []string{"300"},
		Netns: NetnsPath(c.NodeNetns(1)), LogFile: filepath.Join(t.TempDir(), "stray.log")})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(c.StateDir()); err != nil {
		t.Fatal(err)
	}
	rep, err := Down(c.Name, c.StateRoot)
	if err != nil {
		t.Fatal(err)
	}
	if proc.Alive(info) {
		t.Fatalf("process %d in the node namespace survived", info.PID)
	}
	if len(rep.Stopped) != 1 || !strings.Contains(rep.Stopped[0], c.NodeNetns(1)) {
		t.Errorf("stopped %v, want the stray process in %s", rep.Stopped, c.NodeNetns(1))
	}
	if left, _ := ListOwnedNetns(c.Name); len(left) != 0 {
		t.Fatalf("namespaces left: %v", left)
	}
	if _, err := testutil.Run(t, "", "ip", "link", "show", RootLinkName(c.Name)); err == nil {
		t.Fatal("root link left")
	}
}

// TestReclaimStale proves what Up does with namespaces an earlier run of the same lab left:
// while a process runs in them or carries the lab's mark, it refuses and touches nothing;
// once none does, it removes them.
func TestReclaimStale(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "sleep")
	c := Config{Name: "tstale", Nodes: 1, StateRoot: t.TempDir(), UnderlayCIDR: netip.MustParsePrefix("198.18.3.0/24")}.WithDefaults()
	t.Cleanup(func() { _, _ = Down(c.Name, c.StateRoot) })
	if err := BuildTopology(c, &State{Config: c}); err != nil {
		t.Fatal(err)
	}
	before, err := ListOwnedNetns(c.Name)
	if err != nil || len(before) == 0 {
		t.Fatalf("ListOwnedNetns = %v, %v", before, err)
	}
	var said []string
	say := func(f string, a ...any) { said = append(said, fmt.Sprintf(f, a...)) }
	logs := t.TempDir()
	for _, spec := range []proc.Spec{
		{Name: "marked", Path: "sleep", Args: []string{"300"}, Owner: c.Name, LogFile: filepath.Join(logs, "marked.log")},
		{Name: "inside", Path: "sleep", Args: []string{"300"}, Netns: NetnsPath(c.NodeNetns(1)), LogFile: filepath.Join(logs, "inside.log")},
	} {
		info, err := proc.Start(spec)
		if err != nil {
			t.Fatal(err)
		}
		err = reclaimStale(c, say)
		_ = proc.Stop(info, time.Second)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%d (", info.PID)) || !strings.Contains(err.Error(), "is live") {
			t.Fatalf("%s process %d: reclaimStale = %v, want a refusal naming it", spec.Name, info.PID, err)
		}
		if left, _ := ListOwnedNetns(c.Name); len(left) != len(before) {
			t.Fatalf("%s process: refusal removed namespaces: %v left of %v", spec.Name, left, before)
		}
	}
	if err := reclaimStale(c, say); err != nil {
		t.Fatal(err)
	}
	if left, _ := ListOwnedNetns(c.Name); len(left) != 0 {
		t.Fatalf("namespaces left after reclaim: %v", left)
	}
	if _, err := testutil.Run(t, "", "ip", "link", "show", RootLinkName(c.Name)); err == nil {
		t.Fatal("root link left after reclaim")
	}
	if len(said) != 1 || !strings.Contains(said[0], "left by an earlier run") {
		t.Fatalf("progress %q, want one line telling what was removed", said)
	}
}

// TestUpRefusesOverlapBeforeCreatingAnything runs Up against a "host" (a fresh namespace) that
// has an address in the lab's pod CIDR: Up must refuse, naming it, with nothing created.
func TestUpRefusesOverlapBeforeCreatingAnything(t *testing.T) {
	host := testutil.NewNetns(t, "uphost")
	testutil.MustRun(t, host, "ip", "link", "add", "h0", "type", "veth", "peer", "name", "h1")
	testutil.MustRun(t, host, "ip", "addr", "add", "198.18.200.1/25", "dev", "h0")
	root := t.TempDir()
	c := Config{Name: "tovl", StateRoot: root, K8sBin: "/bin/true", SelfBin: "/bin/true"}
	_, err := Up(context.Background(), c, UpOptions{HostNetns: testutil.Path(host)})
	var oe *OverlapError
	if !errors.As(err, &oe) || !strings.Contains(err.Error(), "pod (cluster) CIDR 198.18.128.0/17 overlaps host address 198.18.200.1/25 on h0") {
		t.Fatalf("Up = %v, want an overlap refusal naming 198.18.200.1/25 on h0", err)
	}
	if left, _ := ListOwnedNetns(c.Name); len(left) != 0 {
		t.Fatalf("namespaces created before the check: %v", left)
	}
	if _, err := os.Stat(filepath.Join(root, c.Name)); err == nil {
		t.Fatal("state directory created before the check")
	}
	if _, err := testutil.Run(t, "", "ip", "link", "show", RootLinkName(c.Name)); err == nil {
		t.Fatal("root link created before the check")
	}
}
