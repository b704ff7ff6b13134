package lab

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

// offLabAddr finds an address in Supernet that the root namespace would send
// through a gateway (off the machine, the case the guard exists for), by
// asking the kernel; nothing is sent.
func offLabAddr(t *testing.T) netip.Addr {
	t.Helper()
	for _, s := range []string{"198.19.254.77", "198.18.254.77", "198.19.127.77"} {
		a := netip.MustParseAddr(s)
		rs, err := netlink.RouteGet(net.IP(a.AsSlice()))
		if err == nil && len(rs) > 0 && rs[0].Gw != nil {
			return a
		}
	}
	t.Skip("skipped: no lab address routed through a gateway on this machine (nothing for the guard to refuse)")
	return netip.Addr{}
}

// labLinkAddr finds a running lab's root link and the control plane address
// on its connected /24, or skips.
func labLinkAddr(t *testing.T) (link string, peer, own netip.Addr) {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if !strings.HasPrefix(l.Attrs().Name, rootLinkPrefix) {
			continue
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil || len(addrs) == 0 {
			continue
		}
		p, ok := prefixOf(addrs[0].IPNet)
		if !ok || !Supernet.Contains(p.Addr()) {
			continue
		}
		return l.Attrs().Name, hostIn(p.Masked(), hostCP), p.Addr()
	}
	t.Skip("skipped: no lab running (no " + rootLinkPrefix + "* link in the root namespace)")
	return "", netip.Addr{}, netip.Addr{}
}

func hostIn(p netip.Prefix, n int) netip.Addr {
	b := p.Addr().As4()
	b[3] = byte(n)
	return netip.AddrFrom4(b)
}

func TestCheckRootRouteRefusesTheUplink(t *testing.T) {
	testutil.RequireRoot(t)
	dst := offLabAddr(t)
	if _, err := CheckRootRoute(dst); !errors.Is(err, ErrLabRouteLeaves) || !strings.Contains(err.Error(), "via ") {
		t.Fatalf("CheckRootRoute(%s) = %v, want ErrLabRouteLeaves naming the gateway", dst, err)
	}
	// GuardDial refuses before any socket exists.
	_, err := GuardDial(&net.Dialer{Timeout: time.Second})(context.Background(), "tcp", net.JoinHostPort(dst.String(), "6443"))
	if !errors.Is(err, ErrLabRouteLeaves) {
		t.Fatalf("GuardDial to %s = %v, want ErrLabRouteLeaves", dst, err)
	}
}

func TestCheckRootRouteAllows(t *testing.T) {
	testutil.RequireRoot(t)
	tests := []struct {
		name string
		dst  string
	}{
		{"outside the lab range", "192.0.2.1"},
		{"loopback", "127.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if link, err := CheckRootRoute(netip.MustParseAddr(tt.dst)); err != nil || link != "" {
				t.Fatalf("CheckRootRoute(%s) = %q, %v; want no opinion", tt.dst, link, err)
			}
		})
	}
	t.Run("not the host's namespace", func(t *testing.T) {
		ns := testutil.NewNetns(t, "guard")
		dst := netip.MustParseAddr("198.18.254.77")
		err := namespace.Do(testutil.Path(ns), func() error {
			link, err := CheckRootRoute(dst)
			if err == nil && link != "" {
				t.Errorf("link %q in a fresh namespace", link)
			}
			return err
		})
		if err != nil {
			t.Fatalf("CheckRootRoute inside a lab-style namespace: %v", err)
		}
	})
	t.Run("a running lab's root link", func(t *testing.T) {
		link, peer, own := labLinkAddr(t)
		if got, err := CheckRootRoute(peer); err != nil || got != link {
			t.Fatalf("CheckRootRoute(%s) = %q, %v; want %s", peer, got, err, link)
		}
		if got, err := CheckRootRoute(own); err != nil || got != "" {
			t.Fatalf("CheckRootRoute(own address %s) = %q, %v; want local", own, got, err)
		}
	})
}
