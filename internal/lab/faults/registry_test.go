package faults

import (
	"strings"
	"testing"
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
