// Package netfilter models a node's packet filter rules — iptables-save text
// (legacy and nft backends, IPv4 and IPv6), native nftables rulesets as
// printed by `nft -j list ruleset`, and ipset contents from `ipset save` — and
// traces a packet through them with the kernel's semantics: hooks in order,
// tables and base chains by priority, jump/goto/return, NAT rewrites, marks,
// conntrack state, and probabilistic branches (statistic, numgen) enumerated
// as separate outcomes. Whatever the tracer cannot evaluate exactly yields an
// outcome with verdict "unknown" that names the rule, never a silent accept.
//
// The list of rules a traced packet hit is the evidence of every netfilter
// finding netdoctor reports.
package netfilter
