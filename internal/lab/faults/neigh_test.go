package faults

import (
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/netdoctor/netdoctor/internal/lab"
	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

// A route deleted in a node namespace while a packet through it waits for
// ARP: without the flush, the kernel answers "host unreachable" from the
// host's namespace. The sender here is the node's underlay address, which
// the host reaches over the lab's root link, so the control case stays on
// the machine (a pod address as sender would go out by the default route).
func TestFlushPendingNeighboursStopsHostICMP(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "tcpdump")
	testutil.RequireProgram(t, "ping")
	for _, tc := range []struct {
		name      string
		flush     bool
		wantICMPs bool
	}{
		{"without flush the host answers", false, true},
		{"with flush nothing is sent", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := "tneigh"
			if tc.flush {
				name = "tneighf"
			}
			c := lab.Config{Name: name, Nodes: 1, StateRoot: t.TempDir(),
				UnderlayCIDR: netip.MustParsePrefix("198.18.6.0/24")}.WithDefaults()
			t.Cleanup(func() { _, _ = lab.Down(c.Name, c.StateRoot) })
			if err := lab.BuildTopology(c, &lab.State{Config: c}); err != nil {
				t.Fatal(err)
			}
			out, err := os.CreateTemp(t.TempDir(), "icmp")
			if err != nil {
				t.Fatal(err)
			}
			dump := exec.Command("tcpdump", "-i", lab.RootLinkName(c.Name), "-n", "-l", "icmp")
			dump.Stdout, dump.Stderr = out, out
			if err := dump.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = dump.Process.Kill(); _ = dump.Wait() })
			time.Sleep(time.Second)

			n := c.NodeNetns(1)
			testutil.MustRun(t, n, "ip", "route", "add", "198.18.77.0/24", "dev", lab.UplinkName)
			ping := exec.Command("ping", "-c1", "-W4", "198.18.77.7")
			if err := namespace.Do(lab.NetnsPath(n), ping.Start); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = ping.Process.Kill(); _ = ping.Wait() })
			time.Sleep(300 * time.Millisecond)
			testutil.MustRun(t, n, "ip", "route", "del", "198.18.77.0/24", "dev", lab.UplinkName)
			if tc.flush {
				if err := flushPendingIn(lab.NetnsPath(n)); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(5 * time.Second)
			_ = dump.Process.Kill()
			_ = dump.Wait()
			b, _ := os.ReadFile(out.Name())
			got := strings.Contains(string(b), "unreachable")
			if got != tc.wantICMPs {
				t.Fatalf("ICMP unreachable from the host namespace: %v, want %v; capture:\n%s", got, tc.wantICMPs, b)
			}
		})
	}
}
