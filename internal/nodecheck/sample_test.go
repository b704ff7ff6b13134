package nodecheck_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/netdoctor/netdoctor/internal/cli"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

// TestSampleOutput records real `node check` text output of the lab node,
// healthy and then with a VXLAN-blocking firewall rule and a lowered uplink
// MTU, in testdata/ (the README's sample). Run as root with -update.
func TestSampleOutput(t *testing.T) {
	if !*update {
		t.Skip("skipped: writes the README sample; run with -update as root")
	}
	testutil.RequireRoot(t)
	lab := newFlannelLab(t)
	t.Setenv("NO_COLOR", "1")
	text := func() []byte {
		var out, errb bytes.Buffer
		cli.Run([]string{"netdoctor", "node", "check", "--netns", lab.node, "--node-name", "node-1", "--root-dir", lab.rootDir, "--service-cidr", serviceCIDR}, &out, &errb)
		return out.Bytes()
	}
	if err := os.WriteFile(filepath.Join("testdata", "sample-clean.txt"), text(), 0o644); err != nil {
		t.Fatal(err)
	}
	mustRunIn(t, lab.node, "iptables", "-A", "INPUT", "-p", "udp", "--dport", "8472", "-j", "DROP")
	mustRunIn(t, lab.node, "ip", "link", "set", "eth0", "mtu", "1400")
	if err := os.WriteFile(filepath.Join("testdata", "sample-faults.txt"), text(), 0o644); err != nil {
		t.Fatal(err)
	}
}
