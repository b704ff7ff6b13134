package rules

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/netdoctor/netdoctor/internal/netfilter"
)

// nfView is the node's packet filter, parsed once per Input.
type nfView struct {
	Rulesets []*netfilter.Ruleset
	Env      netfilter.Env
	// Problems are dumps that exist but could not be used; a trace over
	// an incomplete ruleset cannot be trusted to pass.
	Problems []string
	// Missing are dumps the collector could not take (from Errors).
	Missing []string
}

// netfilterView returns the parsed rulesets and the tracer environment.
func (in *Input) netfilterView() *nfView {
	in.nfOnce.Do(func() { in.nf = buildNF(in) })
	return in.nf
}

func buildNF(in *Input) *nfView {
	v := &nfView{}
	s := in.Node
	nf := s.Netfilter
	for _, d := range []struct{ src, text string }{
		{"iptables-legacy", nf.IptablesLegacy},
		{"iptables-nft", nf.IptablesNft},
	} {
		if k := "netfilter." + d.src; s.Errors[k] != "" {
			v.Missing = append(v.Missing, k+": "+s.Errors[k])
		}
		if strings.TrimSpace(d.text) == "" {
			continue
		}
		rs, err := netfilter.ParseIptablesSave([]byte(d.text))
		if err != nil {
			v.Problems = append(v.Problems, fmt.Sprintf("%s dump: %v", d.src, err))
			continue
		}
		rs.Source = d.src
		v.Rulesets = append(v.Rulesets, rs)
	}
	if k := "netfilter.nft"; s.Errors[k] != "" {
		v.Missing = append(v.Missing, k+": "+s.Errors[k])
	}
	written, fromNft := map[string]bool{}, map[string]bool{}
	for _, t := range nf.NftWrittenTables {
		written[t] = true
	}
	if strings.TrimSpace(nf.NftJSON) != "" {
		rs, err := parseNativeNft(nf.NftJSON, strings.TrimSpace(nf.IptablesNft) != "", written)
		switch {
		case err != nil:
			v.Problems = append(v.Problems, fmt.Sprintf("nft -j list ruleset: %v", err))
		case rs != nil:
			rs.Source = "nft"
			v.Rulesets = append(v.Rulesets, rs)
			for _, t := range rs.Tables {
				if written[t.Family+" "+t.Name] {
					fromNft[t.Family+" "+t.Name] = true
				}
			}
		}
	}
	// A table iptables-nft-save prints wrongly is traced from the nft dump
	// when it is there; without it the trace cannot be trusted.
	for i, rs := range v.Rulesets {
		if rs.Source == "iptables-nft" && len(fromNft) > 0 {
			v.Rulesets[i] = withoutTables(rs, fromNft)
		}
	}
	for _, t := range nf.NftWrittenTables {
		if !fromNft[t] {
			v.Problems = append(v.Problems, fmt.Sprintf("iptables-nft table %s holds rules written with nft that iptables-nft-save prints wrongly, and no nft dump of it was taken", t))
		}
	}
	if s.Netfilter.Ipsets != "" {
		sets, err := netfilter.ParseIpsetSave([]byte(s.Netfilter.Ipsets))
		if err != nil {
			v.Problems = append(v.Problems, fmt.Sprintf("ipset save: %v", err))
		} else {
			v.Env.Ipsets = sets
		}
	}
	v.Env.IfaceAddrs = map[string][]netip.Addr{}
	t := in.Topology()
	for _, a := range t.Addrs {
		v.Env.LocalAddrs = append(v.Env.LocalAddrs, a.Prefix.Addr())
	}
	for _, l := range sortedLinkNames(t) {
		for _, a := range t.GlobalV4(l) {
			v.Env.IfaceAddrs[l] = append(v.Env.IfaceAddrs[l], a.Prefix.Addr())
		}
		for _, a := range t.Addrs {
			if a.Link == l && !a.Prefix.Addr().Is4() {
				v.Env.IfaceAddrs[l] = append(v.Env.IfaceAddrs[l], a.Prefix.Addr())
			}
		}
	}
	return v
}

func sortedLinkNames(t *Topology) []string {
	names := make([]string, 0, len(t.Links))
	for n := range t.Links {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Traceable reports whether a trace over the view can be trusted: every dump
// parsed. When not, it says why.
func (v *nfView) Traceable() (string, bool) {
	if len(v.Problems) > 0 {
		return strings.Join(v.Problems, "; "), false
	}
	return "", true
}

// notSeen names the dumps that could not be taken, for a pass reason: the
// verdict holds for the rules that were read.
func (v *nfView) notSeen() string {
	if len(v.Missing) == 0 {
		return ""
	}
	return " (not read: " + strings.Join(v.Missing, "; ") + ")"
}

// FormatHits renders tracer hits as evidence lines.
func FormatHits(hits []netfilter.Hit) []string {
	out := make([]string, 0, len(hits))
	for _, h := range hits {
		src := h.Source
		if src == "" {
			src = h.Backend
		}
		pos := fmt.Sprintf("rule %d", h.Position)
		if h.Position == 0 {
			pos = "policy"
		}
		out = append(out, fmt.Sprintf("%s table %s chain %s %s: %s => %s", src, h.Table, h.Chain, pos, h.Text, h.Action))
	}
	return out
}
