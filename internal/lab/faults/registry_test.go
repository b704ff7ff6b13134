package faults

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/netdoctor/netdoctor/internal/lab"
)

// TestCatalog checks every registered fault is complete and checks something it breaks and
// something it must leave alone.
func TestCatalog(t *testing.T) {
	want := []string{"ip-forward-disabled", "bridge-nf-disabled", "forward-policy-drop", "overlay-port-blocked",
		"pod-route-missing", "overlay-fdb-missing", "mtu-mismatch"}
	for _, id := range want {
		if _, ok := Get(id); !ok {
			t.Errorf("fault %s not registered", id)
		}
	}
	for _, f := range All() {
		t.Run(f.ID, func(t *testing.T) {
			if f.Group == "" || f.Injection == "" || f.Summary == "" {
				t.Errorf("incomplete: %+v", f)
			}
			if strings.ToLower(f.ID) != f.ID || strings.Contains(f.ID, " ") {
				t.Errorf("ID %q is not kebab-case", f.ID)
			}
			broken, works := 0, 0
			for _, c := range f.Checks {
				if c.Broken {
					broken++
				} else {
					works++
				}
			}
			if broken == 0 || works == 0 {
				t.Errorf("%d broken and %d working checks: a fault must say what it breaks and what it leaves alone", broken, works)
			}
		})
	}
}

func TestRegisterRejectsDuplicates(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("duplicate registration did not panic")
		}
	}()
	f, _ := Get("mtu-mismatch")
	Register(f)
}

func TestCheckString(t *testing.T) {
	tests := []struct {
		c    Check
		want string
	}{
		{Check{Kind: PodPing, From: Faulted, To: Peer, Broken: true}, "pod-ping faulted->peer: broken"},
		{Check{Kind: PodDNSCluster, From: Other}, "pod-dns-cluster other: works"},
	}
	for _, tt := range tests {
		if got := tt.c.String(); got != tt.want {
			t.Errorf("got %q want %q", got, tt.want)
		}
	}
}

func TestDNATsToPort(t *testing.T) {
	const (
		ipt   = `-A KUBE-SEP-X -p tcp -m comment --comment "shop/web:http" -m tcp -j DNAT --to-destination 198.18.65.3:8080`
		nftN  = `meta l4proto tcp dnat ip to numgen random mod 3 map { 0 : 198.18.224.3 . 8080, 1 : 198.18.225.2 . 8080, 2 : 198.18.226.3 . 8080 }`
		nft1  = `meta l4proto tcp dnat to 198.18.36.2:6443`
		nft80 = `meta l4proto tcp dnat ip to numgen random mod 2 map { 0 : 198.18.224.2 . 80, 1 : 198.18.225.3 . 80 }`
	)
	for _, tc := range []struct {
		rules string
		port  int
		want  bool
	}{
		{ipt, 8080, true}, {ipt, 80, false},
		{nftN, 8080, true}, {nftN, 80, false},
		{nft1, 6443, true}, {nft1, 644, false},
		{nft80, 80, true}, {nft80, 8080, false},
	} {
		if got := dnatsToPort(tc.rules, tc.port); got != tc.want {
			t.Errorf("dnatsToPort(%q, %d) = %v, want %v", tc.rules, tc.port, got, tc.want)
		}
	}
}

// TestInjectUndoesAFailedInjection: an injection that fails half way is healed with what it
// returned, and not recorded.
func TestInjectUndoesAFailedInjection(t *testing.T) {
	var healedWith map[string]string
	Register(Fault{ID: "test-half-made", Group: "test", Summary: "fails after changing something",
		Inject: func(context.Context, Target) (map[string]string, error) {
			return map[string]string{"old": "http"}, errors.New("kube-proxy never wrote the rule")
		},
		Heal: func(_ context.Context, _ Target, d map[string]string) error { healedWith = d; return nil },
	})
	t.Cleanup(func() { regMu.Lock(); delete(registry, "test-half-made"); regMu.Unlock() })
	dir := t.TempDir()
	l := &lab.Lab{State: &lab.State{Config: lab.Config{Name: "tundo", StateRoot: dir},
		Nodes: []lab.NodeState{{Name: "node1", Netns: "ndlab-tundo-node1"}, {Name: "node2", Netns: "ndlab-tundo-node2"}}}}
	if err := os.MkdirAll(l.State.Config.StateDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := Inject(context.Background(), l, "test-half-made", "node2")
	if err == nil || !strings.Contains(err.Error(), "kube-proxy never wrote the rule") {
		t.Fatalf("Inject = %v, want the injection's error", err)
	}
	if healedWith["old"] != "http" {
		t.Fatalf("heal called with %v, want what the failed injection returned", healedWith)
	}
	if act, err := Active(l); err != nil || len(act) != 0 {
		t.Fatalf("recorded as injected: %v, %v", act, err)
	}
}
