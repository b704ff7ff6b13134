package rules

import (
	"github.com/netdoctor/netdoctor/internal/netfilter"
)

// parseNativeNft returns the native nftables ruleset of an `nft -j list
// ruleset` document without iptables-nft's own tables (those are traced from
// iptables-nft-save, and tracing them twice would double every verdict), or
// nil when nothing native remains.
func parseNativeNft(doc string, haveIptablesNft bool) (*netfilter.Ruleset, error) {
	rs, err := netfilter.ParseNftJSON([]byte(doc))
	if err != nil {
		return nil, err
	}
	var keep []*netfilter.Table
	for _, t := range rs.Tables {
		if haveIptablesNft && (t.Family == "ip" || t.Family == "ip6") && iptablesNftTables[t.Name] {
			continue
		}
		keep = append(keep, t)
	}
	if len(keep) == 0 {
		return nil, nil
	}
	rs.Tables = keep
	return rs, nil
}
