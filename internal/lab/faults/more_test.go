package faults

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/netdoctor/netdoctor/internal/lab/flannel"
)

func TestCoveringPrefix(t *testing.T) {
	tests := []struct {
		in   []string
		want string
	}{
		{[]string{"198.18.64.0/24"}, "198.18.64.0/24"},
		{[]string{"198.18.64.0/24", "198.18.65.0/24"}, "198.18.64.0/23"},
		{[]string{"198.18.64.0/24", "198.18.65.0/24", "198.18.66.0/24"}, "198.18.64.0/22"},
		{[]string{"198.18.128.0/24", "198.18.130.0/24"}, "198.18.128.0/22"},
		{[]string{"198.18.127.0/24", "198.18.128.0/24"}, "198.18.0.0/16"},
	}
	for _, tt := range tests {
		var in []netip.Prefix
		for _, s := range tt.in {
			in = append(in, netip.MustParsePrefix(s))
		}
		got, err := coveringPrefix(in)
		if err != nil || got.String() != tt.want {
			t.Errorf("coveringPrefix(%v) = %v, %v; want %s", tt.in, got, err, tt.want)
		}
	}
	if _, err := coveringPrefix(nil); err == nil {
		t.Error("no prefixes: no error")
	}
}

func TestSplitRule(t *testing.T) {
	// A KUBE-SERVICES jump as iptables-save printed it in the lab.
	line := `KUBE-SERVICES -d 198.19.72.77/32 -p tcp -m comment --comment "shop/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-ABC`
	want := []string{"KUBE-SERVICES", "-d", "198.19.72.77/32", "-p", "tcp", "-m", "comment", "--comment", "shop/web:http cluster IP",
		"-m", "tcp", "--dport", "80", "-j", "KUBE-SVC-ABC"}
	if got := splitRule(line); !reflect.DeepEqual(got, want) {
		t.Errorf("splitRule = %q\nwant %q", got, want)
	}
	if got := splitRule(`A --comment ""`); !reflect.DeepEqual(got, []string{"A", "--comment", ""}) {
		t.Errorf("empty quoted word: %q", got)
	}
}

func TestOverlapAddr(t *testing.T) {
	a, err := overlapAddr(flannel.Peer{PodCIDR: netip.MustParsePrefix("198.18.66.0/24")})
	if err != nil || a.IPNet.String() != "198.18.66.126/25" {
		t.Errorf("overlapAddr = %v, %v", a, err)
	}
	if _, err := overlapAddr(flannel.Peer{PodCIDR: netip.MustParsePrefix("198.18.66.0/26")}); err == nil {
		t.Error("a /26 pod CIDR: no error")
	}
}

func FuzzSplitRule(f *testing.F) {
	f.Add(`KUBE-SERVICES -d 1.2.3.4/32 -m comment --comment "a b" -j X`)
	f.Add("a  b c")
	f.Fuzz(func(t *testing.T, s string) {
		got := splitRule(s)
		// Without quotes (and with spaces as the only blanks) it is strings.Fields.
		if !strings.ContainsAny(s, "\"\t\n\r\v\f\u0085\u00a0") && utf8.ValidString(s) && !hasUnicodeSpace(s) {
			if want := strings.Fields(s); (len(got) != 0 || len(want) != 0) && !reflect.DeepEqual(got, want) {
				t.Errorf("splitRule(%q) = %q, want %q", s, got, want)
			}
		}
	})
}

func hasUnicodeSpace(s string) bool {
	for _, r := range s {
		if r != ' ' && unicode.IsSpace(r) {
			return true
		}
	}
	return false
}

// TestMoreCatalog checks the host, dns, service, kube-proxy and cidr groups: every fault the
// lab can inject is registered in its group, and the two it cannot inject here are not.
func TestMoreCatalog(t *testing.T) {
	groups := map[string]string{
		"pod-cidr-overlap": "host", "rp-filter-strict": "host",
		"dns-pods-unavailable": "dns", "pod-resolv-conf-wrong": "dns", "dns-upstream-failed": "dns",
		"service-no-endpoints": "service", "endpoint-not-listening": "service", "service-rules-missing": "service",
		"kube-proxy-not-running": "kube-proxy", "kube-proxy-not-critical": "kube-proxy",
		"kube-proxy-cluster-cidr-missing": "kube-proxy", "kube-proxy-cluster-cidr-wrong": "kube-proxy",
		"node-pod-cidr-missing":   "cidr",
		"overlay-source-mismatch": "host", "dns-resolution-failed": "dns",
	}
	for id, g := range groups {
		f, ok := Get(id)
		if !ok || f.Group != g {
			t.Errorf("fault %s: registered %v in group %q, want group %q", id, ok, f.Group, g)
		}
	}
	// Not injectable on one machine without touching the root namespace: see host.go.
	for _, id := range []string{"conntrack-table-full"} {
		if _, ok := Get(id); ok {
			t.Errorf("fault %s is registered, but host.go says it cannot be injected here", id)
		}
	}
}

func TestServiceDispatched(t *testing.T) {
	// Lines as kube-proxy writes them (iptables-save -t nat; nft list table ip kube-proxy).
	const ipt = `-A KUBE-SERVICES -d 198.19.72.77/32 -p tcp -m comment --comment "shop/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-ABC
-A KUBE-SVC-DEF ! -s 198.18.64.0/18 -d 198.19.9.9/32 -p tcp -m comment --comment "default/x:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ`
	const nft = `		elements = { 198.19.72.77 . tcp . 80 : goto service-ABC-shop/web/tcp/http }`
	tests := []struct {
		rules, mode, ip string
		want            bool
	}{
		{ipt, "iptables", "198.19.72.77", true},
		{ipt, "iptables", "198.19.9.9", false}, // only its KUBE-SVC chain is left: not dispatched
		{nft, "nftables", "198.19.72.77", true},
		{nft, "nftables", "198.19.9.9", false},
	}
	for _, tt := range tests {
		if got := serviceDispatched(tt.rules, tt.mode, tt.ip); got != tt.want {
			t.Errorf("serviceDispatched(%s, %s) = %v, want %v", tt.mode, tt.ip, got, tt.want)
		}
	}
}
