package collect

import (
	"context"
	"strings"
	"testing"

	"github.com/netdoctor/netdoctor/internal/netfilter"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

// TestCollectNftTables builds, in a fresh namespace, an iptables-nft table
// with only iptables rules (ip nat), a native nft table (inet ndfw), and an
// iptables-nft table holding a native rule (ip filter: "ip saddr @blocked
// drop" next to an iptables rule). The nft dump must hold the native table
// and ip filter but not ip nat; the native rule must be reported against
// iptables-nft-save, which prints it wrongly; ip nat is listed as skipped.
// With a rule limit below ip filter's size, ip filter is reported as not
// dumped instead.
func TestCollectNftTables(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "iptables-nft")
	testutil.RequireProgram(t, "nft")
	ns := testutil.NewNetns(t, "nftinv")
	testutil.MustRun(t, ns, "iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-s", "198.18.30.0/24", "-j", "MASQUERADE")
	testutil.MustRun(t, ns, "iptables-nft", "-A", "INPUT", "-p", "udp", "--dport", "8472", "-j", "ACCEPT")
	testutil.MustRun(t, ns, "nft", "add table inet ndfw; add chain inet ndfw input { type filter hook input priority 10; policy accept; }; add rule inet ndfw input tcp dport 9999 drop")
	testutil.MustRun(t, ns, "nft", "add set ip filter blocked { type ipv4_addr; elements = { 198.18.30.9 } }; add rule ip filter INPUT ip saddr @blocked drop")

	collect := func(t *testing.T) *netfilterResult {
		s, err := Collect(context.Background(), Options{Netns: ns, Sections: []string{SectionNetfilter}})
		if err != nil {
			t.Fatal(err)
		}
		return &netfilterResult{json: s.Netfilter.NftJSON, save: s.Netfilter.IptablesNft, errs: s.Errors, skipped: s.Skipped}
	}

	t.Run("dumped", func(t *testing.T) {
		r := collect(t)
		// iptables-nft-save 1.8.9 prints the native rule without its match
		t.Logf("iptables-nft-save:\n%s", r.save)
		rs, err := netfilter.ParseNftJSON([]byte(r.json))
		if err != nil {
			t.Fatalf("merged nft dump does not parse: %v\n%s", err, r.json)
		}
		var got []string
		for _, tb := range rs.Tables {
			got = append(got, tb.Family+" "+tb.Name)
		}
		if strings.Join(got, ",") != "inet ndfw,ip filter" {
			t.Errorf("tables in the nft dump: %v, want [inet ndfw ip filter]", got)
		}
		if c := rs.Table("ip", "filter").Chain("INPUT"); c == nil || len(c.Rules) != 2 || !strings.Contains(c.Rules[1].Text, "@blocked") {
			t.Errorf("ip filter INPUT in the nft dump: %+v", c)
		}
		if c := rs.Table("inet", "ndfw").Chain("input"); c == nil || len(c.Rules) != 1 {
			t.Errorf("inet ndfw input in the nft dump: %+v", c)
		}
		msg := r.errs["netfilter.iptables-nft"]
		for _, want := range []string{"table ip filter", "1 rules written with nft", "lookup", "INPUT"} {
			if !strings.Contains(msg, want) {
				t.Errorf("netfilter.iptables-nft error %q lacks %q", msg, want)
			}
		}
		if e := r.errs["netfilter.nft"]; e != "" {
			t.Errorf("netfilter.nft error: %s", e)
		}
		if sk := r.skipped["netfilter.nft.iptables-tables"]; !strings.Contains(sk, "ip nat (1 rules)") || strings.Contains(sk, "filter") {
			t.Errorf("skipped: %q, want ip nat only", sk)
		}
		if !strings.Contains(r.save, "MASQUERADE") {
			t.Errorf("iptables-nft-save lacks ip nat:\n%s", r.save)
		}
	})

	t.Run("over the limit", func(t *testing.T) {
		defer func(n int) { CompatTableRuleLimit = n }(CompatTableRuleLimit)
		CompatTableRuleLimit = 1
		r := collect(t)
		if e := r.errs["netfilter.nft"]; !strings.Contains(e, "table ip filter: not dumped") || !strings.Contains(e, "2 rules, over the limit of 1") {
			t.Errorf("netfilter.nft error %q, want ip filter not dumped", e)
		}
		if e := r.errs["netfilter.iptables-nft"]; !strings.Contains(e, "lookup") || !strings.Contains(e, "too big for the nft dump") {
			t.Errorf("netfilter.iptables-nft error: %q", r.errs["netfilter.iptables-nft"])
		}
		rs, err := netfilter.ParseNftJSON([]byte(r.json))
		if err != nil || len(rs.Tables) != 1 || rs.Tables[0].Name != "ndfw" {
			t.Errorf("nft dump over the limit: %v %+v", err, rs)
		}
	})
}

type netfilterResult struct {
	json, save    string
	errs, skipped map[string]string
}

func TestMergeNftJSON(t *testing.T) {
	meta := `{"metainfo": {"version": "1.0.6", "release_name": "Lester \"Gooch\" #5", "json_schema_version": 1}}`
	for _, tc := range []struct {
		name string
		docs []string
		want string
		err  bool
	}{
		{"one", []string{`{"nftables": [` + meta + `, {"table": {"family": "inet", "name": "a", "handle": 1}}]}` + "\n"},
			`{"nftables": [` + meta + `, {"table": {"family": "inet", "name": "a", "handle": 1}}]}` + "\n", false},
		{"two", []string{
			`{"nftables": [` + meta + `, {"table": {"family": "inet", "name": "a", "handle": 1}}]}`,
			`{"nftables": [` + meta + `, {"table": {"family": "ip", "name": "b", "handle": 2}}, {"chain": {"family": "ip", "table": "b", "name": "c", "handle": 1}}]}`},
			`{"nftables": [` + meta + `, {"table": {"family": "inet", "name": "a", "handle": 1}}, {"table": {"family": "ip", "name": "b", "handle": 2}}, {"chain": {"family": "ip", "table": "b", "name": "c", "handle": 1}}]}` + "\n", false},
		{"not json", []string{meta, "nonsense"}, "", true},
		{"no metainfo", []string{`{"nftables": [` + meta + `]}`, `{"nftables": [{"table": {}}]}`}, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := mergeNftJSON(tc.docs)
			if (err != nil) != tc.err || got != tc.want {
				t.Errorf("got %q, %v; want %q (error %v)", got, err, tc.want, tc.err)
			}
			if err == nil {
				if _, err := netfilter.ParseNftJSON([]byte(got)); err != nil {
					t.Errorf("merged document does not parse: %v", err)
				}
			}
		})
	}
}
