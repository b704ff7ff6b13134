package lab

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/netdoctor/netdoctor/internal/lab/proc"
	"github.com/netdoctor/netdoctor/internal/namespace"
)

// NetnsPath is the path of a named namespace.
func NetnsPath(name string) string { return filepath.Join(namespace.NetnsDir, name) }

// Handle opens a netlink handle inside the named namespace ("" = the caller's). Close it.
func Handle(netnsName string) (*netlink.Handle, error) {
	if netnsName == "" {
		return netlink.NewHandle()
	}
	ns, err := netns.GetFromPath(NetnsPath(netnsName))
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", netnsName, err)
	}
	defer func() { _ = ns.Close() }()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in namespace %s: %w", netnsName, err)
	}
	return h, nil
}

// SetSysctl writes a sysctl (dotted key, e.g. net.ipv4.ip_forward) inside the named namespace.
// Equivalent to: ip netns exec NS sysctl -w KEY=VALUE.
func SetSysctl(netnsName, key, value string) error {
	p := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	err := namespace.Do(NetnsPath(netnsName), func() error {
		return os.WriteFile(p, []byte(value), 0o644)
	})
	if err != nil {
		return fmt.Errorf("set sysctl %s=%s in netns %s: %w", key, value, netnsName, err)
	}
	return nil
}

// GetSysctl reads a sysctl inside the named namespace.
func GetSysctl(netnsName, key string) (string, error) {
	p := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	var v string
	err := namespace.Do(NetnsPath(netnsName), func() error {
		b, err := os.ReadFile(p)
		v = strings.TrimSpace(string(b))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("read sysctl %s in netns %s: %w", key, netnsName, err)
	}
	return v, nil
}

// IPNet converts an address and prefix length to a *net.IPNet holding the address itself
// (not the masked network), as netlink.Addr wants.
func IPNet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(bits, a.BitLen())}
}

// PrefixNet converts a prefix to its masked *net.IPNet (route destinations).
func PrefixNet(p netip.Prefix) *net.IPNet {
	p = p.Masked()
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func aliveInfo(in *proc.Info) bool { return proc.Alive(in) }
