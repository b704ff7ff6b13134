package netfilter

import (
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"testing"
)

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatalf("read fixture: %v", err)
	}
	return b
}

func loadRuleset(t testing.TB, name string) *Ruleset {
	t.Helper()
	data := readFixture(t, name)
	var rs *Ruleset
	var err error
	if filepath.Ext(name) == ".json" {
		rs, err = ParseNftJSON(data)
	} else {
		rs, err = ParseIptablesSave(data)
	}
	if err != nil {
		t.Fatalf("parse %s: %v", name, err)
	}
	rs.Source = name
	return rs
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

// destinations returns "verdict dst:port" of each outcome, sorted.
func destinations(outs []Outcome) []string {
	var s []string
	for _, o := range outs {
		s = append(s, string(o.Verdict)+" "+netip.AddrPortFrom(o.Packet.Dst, o.Packet.DstPort).String())
	}
	sort.Strings(s)
	return s
}

func totalProbability(outs []Outcome) float64 {
	p := 0.0
	for _, o := range outs {
		p += o.Probability
	}
	return p
}
