package lab

import (
	"context"
	"fmt"
	"time"

	"github.com/netdoctor/netdoctor/internal/command"
)

// RootPortTable is the nftables table (bridge family, in the hub namespace)
// that guards the root namespace's port of the underlay bridge.
const RootPortTable = "ndlab_root"

// rootPortRules is the ruleset guardRootPort loads: toward v-root (the
// bridge port whose peer is the root namespace's lab link) only ARP and IPv4
// from the underlay to the root address pass. Anything else (a pod address
// as source, another destination, IPv6) would reach the host's namespace,
// which answers what it cannot deliver (ICMP host unreachable, RSTs) to
// addresses it has no route for but its default one: off the machine.
func rootPortRules(c Config) string {
	allow := fmt.Sprintf(`oifname "v-root" ether type arp accept; oifname "v-root" ip saddr %s ip daddr %s accept; oifname "v-root" counter drop`,
		c.UnderlayCIDR.Masked(), c.RootIP())
	// Declare, delete, then define: loading twice leaves one copy. Priority
	// -300 runs before br_netfilter (priority 0), which takes IPv4 frames
	// through iptables and re-injects them past every bridge hook of its own
	// priority: a chain at 0 can be skipped for exactly the frames that matter.
	// postrouting sees forwarded and locally sent frames alike.
	return fmt.Sprintf(`table bridge %[1]s
delete table bridge %[1]s
table bridge %[1]s {
	chain forward { type filter hook forward priority -300; policy accept; %[2]s; }
	chain output { type filter hook output priority -300; policy accept; %[2]s; }
	chain postrouting { type filter hook postrouting priority -300; policy accept; %[2]s; }
}
`, RootPortTable, allow)
}

// guardRootPort loads rootPortRules into the hub namespace (before v-root
// comes up, so no frame crosses unguarded).
func guardRootPort(c Config) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := command.Run(ctx, command.Cmd{Name: "nft", Args: []string{"-f", "-"}, Stdin: []byte(rootPortRules(c)), Netns: NetnsPath(c.HubNetns())})
	if err != nil {
		return fmt.Errorf("guard the root port of %s in %s (nft bridge table %s): %w", BridgeName, c.HubNetns(), RootPortTable, err)
	}
	return nil
}
