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
	if haveIptablesNft {
		// Drop only the tables iptables-nft made (recognised by its built-in
		// chains), not a native table that happens to be called "filter".
		rs = rs.WithoutIptablesCompat()
	}
	if len(rs.Tables) == 0 {
		return nil, nil
	}
	return rs, nil
}
