package netfilter

import (
	"fmt"
	"strings"
)

// Rules returns every rule of the ruleset for which keep returns true
// (all rules if keep is nil), in table, chain and position order.
func (rs *Ruleset) Rules(keep func(*Rule) bool) []*Rule {
	var out []*Rule
	if rs == nil {
		return nil
	}
	for _, t := range rs.Tables {
		for _, c := range t.Chains {
			for _, r := range c.Rules {
				if keep == nil || keep(r) {
					out = append(out, r)
				}
			}
		}
	}
	return out
}

// RulesByTarget returns the rules whose target is target ("DROP",
// "KUBE-MARK-MASQ"; for nftables "drop", "jump"...). A target ending in
// "*" matches as a prefix ("KUBE-SVC-*").
func (rs *Ruleset) RulesByTarget(target string) []*Rule {
	return rs.Rules(func(r *Rule) bool { return wildMatch(target, r.Target) })
}

// RulesByComment returns the rules whose comment contains substr, e.g.
// "default/web:http" finds kube-proxy's rules of that service port.
func (rs *Ruleset) RulesByComment(substr string) []*Rule {
	return rs.Rules(func(r *Rule) bool { return strings.Contains(r.Comment, substr) })
}

// Chains returns the chains whose name matches pattern (a trailing "*"
// matches as a prefix: "KUBE-SVC-*"), over all tables.
func (rs *Ruleset) Chains(pattern string) []*Chain {
	var out []*Chain
	if rs == nil {
		return nil
	}
	for _, t := range rs.Tables {
		for _, c := range t.Chains {
			if wildMatch(pattern, c.Name) {
				out = append(out, c)
			}
		}
	}
	return out
}

// JumpTarget returns the chain a rule jumps or goes to, or nil.
func (r *Rule) JumpTarget() *Chain {
	if r.ipt.jump != nil {
		return r.ipt.jump
	}
	return nil
}

// Location names a rule as "table/chain#position" (with the family for
// nftables: "ip kube-proxy/services#1").
func (r *Rule) Location() string {
	if r.chain == nil || r.chain.table == nil {
		return fmt.Sprintf("?#%d", r.Position)
	}
	t := r.chain.table
	if len(t.Sets) > 0 || t.Family == "inet" || t.Family == "bridge" || t.Family == "netdev" || t.Family == "arp" {
		return fmt.Sprintf("%s %s/%s#%d", t.Family, t.Name, r.chain.Name, r.Position)
	}
	return fmt.Sprintf("%s/%s#%d", t.Name, r.chain.Name, r.Position)
}

func wildMatch(pattern, s string) bool {
	if strings.HasSuffix(pattern, "*") {
		return strings.HasPrefix(s, pattern[:len(pattern)-1])
	}
	return pattern == s
}

// iptablesCompatTables are the tables iptables-nft creates.
var iptablesCompatTables = map[string]bool{"filter": true, "nat": true, "mangle": true, "raw": true, "security": true}

// IsIptablesCompat reports whether an nftables table was made by
// iptables-nft (tables "filter", "nat"... of family ip/ip6 with upper-case
// built-in chains). Those rules are better traced from iptables-save.
func (t *Table) IsIptablesCompat() bool {
	if (t.Family != "ip" && t.Family != "ip6") || !iptablesCompatTables[t.Name] {
		return false
	}
	for _, c := range t.Chains {
		if iptBuiltin[c.Name] {
			return true
		}
	}
	return false
}

// WithoutIptablesCompat returns a copy of an nftables ruleset without the
// tables made by iptables-nft, so that tracing iptables-save output and
// `nft -j list ruleset` together does not see those rules twice.
func (rs *Ruleset) WithoutIptablesCompat() *Ruleset {
	out := &Ruleset{Backend: rs.Backend, Source: rs.Source, Family: rs.Family}
	for _, t := range rs.Tables {
		if rs.Backend == BackendNftables && t.IsIptablesCompat() {
			continue
		}
		out.Tables = append(out.Tables, t)
	}
	return out
}
