package netfilter

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// addSeeds adds every testdata file with one of the suffixes.
func addSeeds(f *testing.F, suffixes ...string) {
	for _, dir := range []string{"testdata", filepath.Join("testdata", "src")} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			f.Fatal(err)
		}
		for _, e := range entries {
			for _, s := range suffixes {
				if strings.HasSuffix(e.Name(), s) {
					b, err := os.ReadFile(filepath.Join(dir, e.Name()))
					if err != nil {
						f.Fatal(err)
					}
					f.Add(b)
				}
			}
		}
	}
}

// fuzzTrace traces a few packets through a parsed ruleset: whatever the
// input, tracing must not panic and probabilities must stay in [0,1].
func fuzzTrace(t *testing.T, rs *Ruleset) {
	env := Env{LocalAddrs: []netip.Addr{netip.MustParseAddr("198.19.255.1")},
		IfaceAddrs: map[string][]netip.Addr{"eth0": {netip.MustParseAddr("198.19.255.1")}}}
	for _, flow := range []Flow{FlowInbound, FlowOutput} {
		pkt := Packet{Src: netip.MustParseAddr("198.18.1.5"), Dst: netip.MustParseAddr("198.19.0.20"), Proto: "tcp", SrcPort: 1, DstPort: 80, InIface: "cni0", OutIface: "eth0"}
		outs, err := Trace([]*Ruleset{rs}, pkt, flow, env)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range outs {
			if o.Probability < 0 || o.Probability > 1+1e-9 {
				t.Fatalf("probability %v", o.Probability)
			}
		}
	}
}

func FuzzParseIptablesSave(f *testing.F) {
	addSeeds(f, ".save", ".rules")
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := ParseIptablesSave(data)
		if err != nil {
			return
		}
		fuzzTrace(t, rs)
		_, _ = KubeProxyServices(rs)
	})
}

func FuzzParseNftJSON(f *testing.F) {
	addSeeds(f, ".json")
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := ParseNftJSON(data)
		if err != nil {
			return
		}
		fuzzTrace(t, rs)
		_, _ = KubeProxyServices(rs)
	})
}

func FuzzParseIpset(f *testing.F) {
	addSeeds(f, ".ipset")
	f.Add(readFixture(f, "ipsets.save"))
	f.Fuzz(func(t *testing.T, data []byte) {
		sets, err := ParseIpsetSave(data)
		if err != nil {
			return
		}
		pkt := Packet{Src: netip.MustParseAddr("198.18.1.5"), Dst: netip.MustParseAddr("198.19.0.20"), Proto: "udp", DstPort: 80}
		for _, s := range sets {
			_, _ = s.Contains(pkt, []string{"src", "dst", "dst"}, sets)
		}
	})
}
