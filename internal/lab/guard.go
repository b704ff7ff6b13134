package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netdoctor/netdoctor/internal/namespace"
)

// Supernet is the range every lab address comes from (RFC 2544 benchmarking).
var Supernet = netip.MustParsePrefix("198.18.0.0/15")

// ErrLabRouteLeaves is returned (wrapped) by CheckRootRoute and GuardDial
// when traffic to a lab address would not stay on a lab's root link.
var ErrLabRouteLeaves = errors.New("route to a lab address does not go through a lab's root link")

// rootLinkPrefix is what RootLinkName puts before every lab's name.
var rootLinkPrefix = RootLinkName("")

// CheckRootRoute asks the kernel (netlink RouteGet, as `ip route get`) how
// the calling thread's network namespace would reach dst, and reports an
// error wrapping ErrLabRouteLeaves unless dst is safe to send to from there:
//
//   - dst outside Supernet, or the thread not in the machine's initial
//     network namespace (PID 1's): not a lab address seen from the host, no
//     opinion (nil, "");
//   - dst is one of this namespace's own addresses: nil, "";
//   - otherwise the route must be a lab root link's connected route (a link
//     named RootLinkName(...), no gateway): nil and that link's name.
//
// A lab that is down or half up leaves no such route and the host's default
// route would carry the packet off the machine: refused, saying which way
// it would have gone.
func CheckRootRoute(dst netip.Addr) (link string, err error) {
	dst = dst.Unmap()
	if !Supernet.Contains(dst) {
		return "", nil
	}
	initial, err := inInitialNetns()
	if err != nil || !initial {
		return "", err
	}
	routes, err := netlink.RouteGet(net.IP(dst.AsSlice()))
	if err != nil {
		return "", fmt.Errorf("%w: route to %s: %w", ErrLabRouteLeaves, dst, err)
	}
	if len(routes) == 0 {
		return "", fmt.Errorf("%w: no route to %s", ErrLabRouteLeaves, dst)
	}
	r := routes[0]
	name := fmt.Sprintf("link #%d", r.LinkIndex)
	if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
		name = l.Attrs().Name
	}
	if r.Type == unix.RTN_LOCAL || name == "lo" {
		return "", nil
	}
	if r.Gw != nil || !strings.HasPrefix(name, rootLinkPrefix) {
		via := "dev " + name
		if r.Gw != nil {
			via = "via " + r.Gw.String() + " " + via
		}
		return "", fmt.Errorf("%w: %s would leave %s, not through a lab's own link (%s*): is the lab up? (netdoctor lab status)",
			ErrLabRouteLeaves, dst, via, rootLinkPrefix)
	}
	return name, nil
}

// GuardDial is a DialContext (for rest.Config.Dial, http.Transport) for
// clients that talk to a lab from the host, such as kubectl-style clients of
// the lab's API server. Before each dial it runs CheckRootRoute on the
// literal destination address and refuses to dial when the route would leave
// the lab; when the route is a lab root link, the socket is also bound to
// that link (SO_BINDTODEVICE), so the kernel cannot send it anywhere else
// even if the routes change meanwhile. base (nil: the zero Dialer) gives
// timeouts and keep-alives. Destinations outside Supernet are dialled as
// base would.
func GuardDial(base *net.Dialer) func(ctx context.Context, network, address string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		d := net.Dialer{}
		if base != nil {
			d = *base
		}
		host, _, err := net.SplitHostPort(address)
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", address, err)
		}
		ip, err := netip.ParseAddr(host)
		if err != nil {
			// A name: resolve it here, so the check sees the address dialled.
			ips, err := d.Resolver.LookupNetIP(ctx, "ip", host)
			if err != nil {
				return nil, fmt.Errorf("dial %s: resolve %s: %w", address, host, err)
			}
			if len(ips) == 0 {
				return nil, fmt.Errorf("dial %s: %s has no address", address, host)
			}
			_, port, _ := net.SplitHostPort(address)
			ip, address = ips[0], net.JoinHostPort(ips[0].Unmap().String(), port)
		}
		link, err := CheckRootRoute(ip)
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", address, err)
		}
		if link != "" {
			prev := d.Control
			d.Control = func(network, address string, c syscall.RawConn) error {
				var serr error
				if err := c.Control(func(fd uintptr) { serr = unix.BindToDevice(int(fd), link) }); err != nil {
					return err
				}
				if serr != nil {
					return fmt.Errorf("bind to lab link %s: %w", link, serr)
				}
				if prev != nil {
					return prev(network, address, c)
				}
				return nil
			}
		}
		return d.DialContext(ctx, network, address)
	}
}

// inInitialNetns reports whether the calling thread is in the machine's own
// network namespace: PID 1's when that can be read, otherwise any namespace
// that is not one of the named ones under /var/run/netns (lab and test
// namespaces are named), so that an unknown case is checked, not let through.
func inInitialNetns() (bool, error) {
	var self unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &self); err != nil {
		return false, fmt.Errorf("stat own network namespace: %w", err)
	}
	var init unix.Stat_t
	if err := unix.Stat("/proc/1/ns/net", &init); err == nil {
		return self.Dev == init.Dev && self.Ino == init.Ino, nil
	}
	entries, err := os.ReadDir(namespace.NetnsDir)
	if err != nil {
		return true, nil //nolint:nilerr // no named namespaces: this is the host's
	}
	for _, e := range entries {
		var st unix.Stat_t
		if unix.Stat(filepath.Join(namespace.NetnsDir, e.Name()), &st) == nil && st.Dev == self.Dev && st.Ino == self.Ino {
			return false, nil
		}
	}
	return true, nil
}

// RequireLabNetns refuses to go on in the machine's own network namespace: the lab's load
// programs (the fault clients `lab portfill`, `lab nicqueue`, `lab dnsrace`) run only inside
// the lab's node and pod namespaces, never against the host's network.
func RequireLabNetns(program string) error {
	host, err := inInitialNetns()
	if err != nil {
		return err
	}
	if host {
		return fmt.Errorf("%s runs only inside a lab network namespace (the lab starts it there); it is in the machine's own", program)
	}
	return nil
}
