package netfilter

import (
	"sync"
	"testing"
)

// TestTraceConcurrently traces from several goroutines over shared
// rulesets (run with -race): a parsed Ruleset is read-only.
func TestTraceConcurrently(t *testing.T) {
	rss := []*Ruleset{loadRuleset(t, "kubeproxy-like-iptables-nft.save"), loadRuleset(t, "kubeproxy-like-nftables.json")}
	env := nodeEnv(t)
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				outs, err := Trace(rss, pod("198.19.0.20", "tcp", 80), FlowInbound, env)
				if err != nil || len(outs) != 3 {
					t.Errorf("%d outcomes, %v", len(outs), err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
