package collect

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

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
	{"netfilter.nft", "nft", []string{"-j", "list", "ruleset"}},
	{"netfilter.ipset", "ipset", []string{"save"}},
}

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
	for i, d := range netfilterDumps {
		wg.Add(1)
		go func() {
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
