package rules_test

import (
	"strings"
	"testing"

	"github.com/netdoctor/netdoctor/internal/finding"
	"github.com/netdoctor/netdoctor/internal/rules"
)

// TestRPFilterLabCapture runs the rp-filter rule on snapshots of a real lab node2
// (netdoctor node collect --netns ndlab-<lab>-node2), before and while the lab's
// rp-filter-strict fault is injected: a second, unaddressed uplink eth1 carries the host
// route to the external host, which sits on eth0's network, and eth0 has rp_filter=1.
func TestRPFilterLabCapture(t *testing.T) {
	tests := []struct {
		fixture  string
		want     finding.Status
		contains []string
	}{
		{fixture: "lab-node2-clean", want: finding.Pass},
		{fixture: "lab-node1", want: finding.Pass},
		{fixture: "lab-node2-rp-filter-strict", want: finding.Fail, contains: []string{
			"eth0: effective rp_filter = 1 (max of net.ipv4.conf.all.rp_filter = 0, net.ipv4.conf.eth0.rp_filter = 1)",
			`route "198.18.41.100/32 dev eth1`,
			"198.18.41.100/32 is also reached by eth0 (198.18.41.0/24",
			"their reverse path is eth1",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.fixture, func(t *testing.T) {
			r := evaluate(loadFixture(t, tt.fixture), nil, rules.Hints{})
			var c *finding.Check
			for i := range r.Checks {
				if r.Checks[i].ID == "rp-filter-strict" {
					c = &r.Checks[i]
				}
			}
			if c == nil {
				t.Fatal("no rp-filter-strict check in the report")
			}
			if c.Status != tt.want {
				t.Fatalf("status %s, want %s: %s", c.Status, tt.want, c.Reason)
			}
			if tt.want != finding.Fail {
				return
			}
			f := findingOf(r, "rp-filter-strict")
			if f == nil {
				t.Fatal("no rp-filter-strict finding")
			}
			all := strings.Join(f.Evidence, "\n")
			for _, w := range tt.contains {
				if !strings.Contains(all, w) {
					t.Errorf("evidence lacks %q:\n%s", w, all)
				}
			}
		})
	}
}
