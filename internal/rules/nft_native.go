package rules

import (
	"github.com/netdoctor/netdoctor/internal/netfilter"
)

// parseNativeNft returns the native nftables ruleset of an `nft -j list
// ruleset` document without iptables-nft's own tables (those are traced from
// iptables-nft-save, and tracing them twice would double every verdict), or
// nil when nothing native remains. Tables named in trusted ("ip filter") stay
// although iptables-nft made them: they hold rules written with nft that
// iptables-nft-save prints wrongly, so the nft dump is the one to trace.
func parseNativeNft(doc string, haveIptablesNft bool, trusted map[string]bool) (*netfilter.Ruleset, error) {
	rs, err := netfilter.ParseNftJSON([]byte(doc))
	if err != nil {
		return nil, err
	}
	if haveIptablesNft {
		// Drop only the tables iptables-nft made (recognised by its built-in
		// chains), not a native table that happens to be called "filter".
		keep := rs.Tables[:0:0]
		for _, t := range rs.Tables {
			if t.IsIptablesCompat() && !trusted[t.Family+" "+t.Name] {
				continue
			}
			keep = append(keep, t)
		}
		rs.Tables = keep
	}
	if len(rs.Tables) == 0 {
		return nil, nil
	}
	return rs, nil
}

// withoutTables returns a copy of an iptables ruleset without the tables
// named in drop ("ip filter").
func withoutTables(rs *netfilter.Ruleset, drop map[string]bool) *netfilter.Ruleset {
	out := &netfilter.Ruleset{Backend: rs.Backend, Source: rs.Source, Family: rs.Family}
	for _, t := range rs.Tables {
		if !drop[t.Family+" "+t.Name] {
			out.Tables = append(out.Tables, t)
		}
	}
	return out
}
