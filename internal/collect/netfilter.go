package collect

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netdoctor/netdoctor/internal/command"
)

// netfilterDumps are the programs whose output makes up facts.Netfilter,
// keyed by the section name used in Errors.
var netfilterDumps = []struct {
	section string
	name    string
	args    []string
}{
	{"netfilter.iptables-legacy", "iptables-legacy-save", nil},
	{"netfilter.iptables-nft", "iptables-nft-save", nil},
	{"netfilter.ip6tables-legacy", "ip6tables-legacy-save", nil},
	{"netfilter.ip6tables-nft", "ip6tables-nft-save", nil},
	// nft: see collectNft (native tables one by one, not the whole ruleset)
	{"netfilter.nft", "nft", []string{"-j", "list", "ruleset"}},
	{"netfilter.ipset", "ipset", []string{"save"}},
}

// nftDumpIndex is the nft entry of netfilterDumps.
const nftDumpIndex = 4

// CompatTableRuleLimit bounds the iptables-nft tables dumped with `nft -j`
// (those holding native nft rules that iptables-nft-save cannot show): nft
// renders every iptables-nft rule as JSON at about 150 us and 7 kB of
// memory each (170,000 rules: 27 s and 1.2 GB), so a bigger table is left
// out and reported instead.
var CompatTableRuleLimit = 20000

// DumpTimeout bounds each netfilter dump (a huge ruleset or a held xtables
// lock must not stall the whole collection).
var DumpTimeout = 30 * time.Second

// collectNetfilter runs the iptables/nft/ipset dumps inside the target
// namespace, all at once. A missing program or a failing dump is an Errors
// entry; the others are kept.
func (c *collector) collectNetfilter(ctx context.Context) {
	out := make([]string, len(netfilterDumps))
	ok := make([]bool, len(netfilterDumps))
	var wg sync.WaitGroup
	// the nft dump waits for iptables-nft-save and ip6tables-nft-save: a
	// family whose save failed gets its iptables tables from nft instead
	var nftSaves sync.WaitGroup
	nftSaves.Add(2)
	for i, d := range netfilterDumps {
		wg.Add(1)
		if i == nftDumpIndex {
			go func() {
				defer wg.Done()
				out[i], ok[i] = c.collectNft(ctx, &nftSaves, &ok)
			}()
			continue
		}
		go func() {
			if i == 1 || i == 3 {
				defer nftSaves.Done()
			}
			defer wg.Done()
			dctx, cancel := context.WithTimeout(ctx, DumpTimeout)
			defer cancel()
			b, err := command.Output(dctx, c.nsPath, d.name, d.args...)
			if err != nil {
				if errors.Is(err, command.ErrNotFound) {
					c.fail(d.section, fmt.Errorf("%s not installed: %w", d.name, err))
				} else {
					c.fail(d.section, fmt.Errorf("dump %s in %s: %w", d.name, c.nsLabel(), err))
				}
				return
			}
			out[i], ok[i] = string(b), true
		}()
	}
	wg.Wait()
	nf := &c.snap.Netfilter
	nf.IptablesLegacy, nf.IptablesNft, nf.Ip6tablesLegacy, nf.Ip6tablesNft, nf.NftJSON, nf.Ipsets =
		out[0], out[1], out[2], out[3], out[4], out[5]
	// Which backend holds rules is unknown when no iptables dump could be taken.
	if ok[0] || ok[1] || ok[2] || ok[3] {
		nf.Backend = IptablesBackend(nf.IptablesLegacy+nf.Ip6tablesLegacy, nf.IptablesNft+nf.Ip6tablesNft)
	}
}

// IptablesBackend says which iptables backend holds rules, given the
// iptables-save output of each: "legacy", "nft", "both" or "none". A backend
// holds rules when its dump has a rule (-A) or a built-in chain whose policy
// is not ACCEPT.
func IptablesBackend(legacySave, nftSave string) string {
	l, n := saveHasRules(legacySave), saveHasRules(nftSave)
	switch {
	case l && n:
		return "both"
	case l:
		return "legacy"
	case n:
		return "nft"
	}
	return "none"
}

func saveHasRules(save string) bool {
	for line := range strings.Lines(save) {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "-A ") {
			return true
		}
		// ":INPUT DROP [0:0]"; user chains show "-" as policy.
		if strings.HasPrefix(line, ":") {
			f := strings.Fields(line)
			if len(f) >= 2 && f[1] != "ACCEPT" && f[1] != "-" {
				return true
			}
		}
	}
	return false
}

// collectNft dumps the native nftables state. `nft -j list ruleset` would
// also render every table iptables-nft made, rule by rule, which at
// kube-proxy scale takes tens of seconds and a gigabyte; those tables are
// read from iptables-nft-save. Instead:
//
//   - the tables are listed through nf_tables netlink (cheap);
//   - tables iptables-nft did not make are dumped one by one with
//     `nft -j list table FAMILY NAME`;
//   - the tables iptables-nft makes (ip/ip6 filter, nat, mangle, raw,
//     security) are scanned through netlink, chain by chain, reading only
//     each rule's expression names. A rule with an expression iptables-nft
//     never builds (set lookup, ct, numgen, fib...) was put there with nft,
//     and iptables-nft-save prints it wrongly: such a table is dumped with
//     nft as well (up to CompatTableRuleLimit rules), and the iptables-nft
//     section gets an Errors entry naming it. A table that cannot be dumped
//     is an Errors entry of netfilter.nft.
//
// The result is one {"nftables": [...]} document like `nft -j list ruleset`
// prints, holding the dumped tables. Without netlink access it falls back
// to `nft -j list ruleset`.
func (c *collector) collectNft(ctx context.Context, saves *sync.WaitGroup, saved *[]bool) (string, bool) {
	const section = "netfilter.nft"
	if _, err := exec.LookPath("nft"); err != nil {
		saves.Wait()
		c.fail(section, fmt.Errorf("nft not installed: %w: %w", command.ErrNotFound, err))
		return "", false
	}
	run := func(args ...string) (string, error) {
		dctx, cancel := context.WithTimeout(ctx, DumpTimeout)
		defer cancel()
		b, err := command.Output(dctx, c.nsPath, "nft", args...)
		if err != nil {
			return "", fmt.Errorf("dump nft %s in %s: %w", strings.Join(args, " "), c.nsLabel(), err)
		}
		return string(b), nil
	}
	tables, scans, err := c.nftInventory()
	if err != nil {
		saves.Wait()
		doc, err2 := run("-j", "list", "ruleset")
		if err2 != nil {
			c.fail(section, fmt.Errorf("%w (table inventory: %w)", err2, err))
			return "", false
		}
		return doc, true
	}
	var docs []string
	var notDumped []string
	dump := func(t nftTableRef) {
		doc, err := run("-j", "list", "table", t.Family, t.Name)
		if err != nil {
			notDumped = append(notDumped, fmt.Sprintf("table %s: %v", t, err))
			return
		}
		docs = append(docs, doc)
	}
	var compatOnly []string
	for _, t := range tables {
		if !t.compat() {
			dump(t)
		}
	}
	saves.Wait()
	for _, t := range tables {
		if !t.compat() {
			continue
		}
		s := scans[t]
		saveSection, saveOK := "netfilter.iptables-nft", (*saved)[1]
		if t.Family == "ip6" {
			saveSection, saveOK = "netfilter.ip6tables-nft", (*saved)[3]
		}
		switch {
		case s.Native == 0 && saveOK:
			compatOnly = append(compatOnly, fmt.Sprintf("%s (%d rules)", t, s.Rules))
			continue
		case s.Native > 0:
			c.mu.Lock()
			c.snap.Netfilter.NftWrittenTables = append(c.snap.Netfilter.NftWrittenTables, t.String())
			c.mu.Unlock()
			where := "read that table from the nft dump"
			if s.Rules > CompatTableRuleLimit {
				where = "the table is too big for the nft dump (see netfilter.nft)"
			}
			c.fail(saveSection, fmt.Errorf("table %s holds %d rules written with nft (expressions %s; chains %s) that %s-save prints wrongly; %s",
				t, s.Native, strings.Join(s.Exprs, ", "), strings.Join(s.Chains, ", "), strings.TrimPrefix(saveSection, "netfilter."), where))
		}
		if s.Rules > CompatTableRuleLimit {
			why := "its save failed"
			if s.Native > 0 {
				why = fmt.Sprintf("it holds %d rules written with nft", s.Native)
			}
			notDumped = append(notDumped, fmt.Sprintf("table %s: not dumped with nft -j although %s: %d rules, over the limit of %d (nft takes about 150 us and 7 kB per rule)",
				t, why, s.Rules, CompatTableRuleLimit))
			continue
		}
		dump(t)
	}
	if len(compatOnly) > 0 {
		c.skip(section+".iptables-tables", "made by iptables-nft with no rule written with nft (checked through netlink): "+
			strings.Join(compatOnly, ", ")+"; not dumped with nft -j, iptables-nft-save has them")
	}
	if len(notDumped) > 0 {
		c.fail(section, errors.New(strings.Join(notDumped, "; ")))
	}
	if len(docs) == 0 {
		if len(notDumped) > 0 {
			return "", false
		}
		// nothing native: an empty ruleset, as `nft -j list ruleset` prints it
		return `{"nftables": []}` + "\n", true
	}
	doc, err := mergeNftJSON(docs)
	if err != nil {
		c.fail(section, fmt.Errorf("merge nft table dumps: %w", err))
		return "", false
	}
	return doc, true
}

// nftInventory lists the nf_tables tables of the target namespace and
// scans the rules of the iptables-nft ones.
func (c *collector) nftInventory() ([]nftTableRef, map[nftTableRef]nftRuleScan, error) {
	conn, err := openNftConn(c.nsPath)
	if err != nil {
		return nil, nil, err
	}
	defer func() { _ = conn.Close() }()
	tables, err := conn.tables()
	if err != nil {
		return nil, nil, fmt.Errorf("list nf_tables tables: %w", err)
	}
	scans := map[nftTableRef]nftRuleScan{}
	chains := map[string]map[string][]string{}
	for _, t := range tables {
		if !t.compat() {
			continue
		}
		if chains[t.Family] == nil {
			fam := uint8(unix.NFPROTO_IPV4)
			if t.Family == "ip6" {
				fam = unix.NFPROTO_IPV6
			}
			if chains[t.Family], err = conn.chains(fam); err != nil {
				return nil, nil, fmt.Errorf("list %s chains: %w", t.Family, err)
			}
		}
		s, err := conn.scanRules(t, chains[t.Family][t.Name])
		if err != nil {
			return nil, nil, fmt.Errorf("scan rules of table %s: %w", t, err)
		}
		scans[t] = s
	}
	return tables, scans, nil
}
