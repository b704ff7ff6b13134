package lab

import (
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/netdoctor/netdoctor/internal/testutil"
)

func TestRootPortRules(t *testing.T) {
	c := Config{Name: "tguard", UnderlayCIDR: netip.MustParsePrefix("198.18.7.0/24")}.WithDefaults()
	got := rootPortRules(c)
	for _, want := range []string{
		"table bridge " + RootPortTable,
		`oifname "v-root" ether type arp accept`,
		`oifname "v-root" ip saddr 198.18.7.0/24 ip daddr 198.18.7.254 accept`,
		`oifname "v-root" counter drop`,
		"hook forward", "hook output",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("rules lack %q:\n%s", want, got)
		}
	}
}

var dropCounter = regexp.MustCompile(`counter packets (\d+) bytes \d+ drop`)

// rootPortDrops sums the drop counters of the hub's root-port table.
func rootPortDrops(t *testing.T, c Config) int {
	t.Helper()
	out := testutil.MustRun(t, c.HubNetns(), "nft", "list", "table", "bridge", RootPortTable)
	n := 0
	for _, m := range dropCounter.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.Atoi(m[1])
		n += v
	}
	return n
}

// checkRootPortGuard: what is not underlay-to-root IPv4 stops at the hub.
// Two senders on node1, neither of which could leave the machine even if the
// guard failed:
//   - IPv6 all-nodes multicast on the uplink (link-local);
//   - IPv4 unicast to the root link's MAC for another underlay address, the
//     frame br_netfilter takes through iptables (a chain at its priority can
//     be skipped); unguarded, the host namespace would answer node1's
//     underlay address, which it reaches over the lab's own link.
func checkRootPortGuard(t *testing.T, c Config) {
	t.Helper()
	before := rootPortDrops(t, c)
	_, _ = testutil.Run(t, c.NodeNetns(1), "ping", "-6", "-c1", "-W1", "ff02::1%"+UplinkName)
	after := rootPortDrops(t, c)
	if after <= before {
		t.Fatalf("root port guard dropped no IPv6 (%d before, %d after)", before, after)
	}
	mac, err := os.ReadFile("/sys/class/net/" + RootLinkName(c.Name) + "/address")
	if err != nil {
		t.Fatal(err)
	}
	other := hostIn(c.UnderlayCIDR.Masked(), 77).String()
	testutil.MustRun(t, c.NodeNetns(1), "ip", "neigh", "replace", other, "lladdr", strings.TrimSpace(string(mac)), "dev", UplinkName, "nud", "permanent")
	_, _ = testutil.Run(t, c.NodeNetns(1), "ping", "-c2", "-i0.2", "-W1", other)
	if final := rootPortDrops(t, c); final < after+2 {
		t.Fatalf("root port guard let IPv4 for %s through to the root link's MAC (drops %d -> %d)", other, after, final)
	}
}
