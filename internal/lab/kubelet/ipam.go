package kubelet

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// IPAM hands out pod addresses from a node's pod CIDR like CNI's host-local plugin: one file
// per allocated address in a directory, holding the owner's ID, so allocations survive a
// kubelet restart.
type IPAM struct {
	mu     sync.Mutex
	Dir    string
	Subnet netip.Prefix
}

// Allocate returns owner's address, allocating the lowest free one (the network address,
// the gateway .1 and the broadcast address are never handed out).
func (m *IPAM) Allocate(owner string) (netip.Addr, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := os.MkdirAll(m.Dir, 0o755); err != nil {
		return netip.Addr{}, fmt.Errorf("IPAM directory: %w", err)
	}
	if a, ok := m.lookup(owner); ok {
		return a, nil
	}
	sub := m.Subnet.Masked()
	last := lastAddr(sub)
	for a := sub.Addr().Next().Next(); sub.Contains(a) && a != last; a = a.Next() {
		p := filepath.Join(m.Dir, a.String())
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			if errors.Is(err, os.ErrExist) {
				continue
			}
			return netip.Addr{}, fmt.Errorf("allocate %s: %w", a, err)
		}
		_, werr := f.WriteString(owner)
		cerr := f.Close()
		if err := errors.Join(werr, cerr); err != nil {
			return netip.Addr{}, fmt.Errorf("allocate %s: %w", a, err)
		}
		return a, nil
	}
	return netip.Addr{}, fmt.Errorf("pod CIDR %s is exhausted", m.Subnet)
}

func (m *IPAM) lookup(owner string) (netip.Addr, bool) {
	ents, _ := os.ReadDir(m.Dir)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(m.Dir, e.Name()))
		if err == nil && strings.TrimSpace(string(b)) == owner {
			if a, err := netip.ParseAddr(e.Name()); err == nil {
				return a, true
			}
		}
	}
	return netip.Addr{}, false
}

// Release frees owner's address, if any.
func (m *IPAM) Release(owner string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if a, ok := m.lookup(owner); ok {
		_ = os.Remove(filepath.Join(m.Dir, a.String()))
	}
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
