package lab

import (
	"net/netip"
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
// node1 pings all IPv6 nodes on its uplink (link-local multicast: even
// unguarded it could not leave the root namespace's link); the hub drops the
// copy toward the root namespace.
func checkRootPortGuard(t *testing.T, c Config) {
	t.Helper()
	before := rootPortDrops(t, c)
	_, _ = testutil.Run(t, c.NodeNetns(1), "ping", "-6", "-c1", "-W1", "ff02::1%"+UplinkName)
	if after := rootPortDrops(t, c); after <= before {
		t.Fatalf("root port guard dropped nothing (%d before, %d after)", before, after)
	}
}
