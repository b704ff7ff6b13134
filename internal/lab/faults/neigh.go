package faults

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/netdoctor/netdoctor/internal/lab"
)

// flushPendingNeighbours deletes the neighbour entries still resolving
// (INCOMPLETE) in every node namespace of the lab, dropping the packets
// queued on them.
//
// Why: when an inject or heal deletes a route or an address inside a node
// namespace, packets waiting on ARP through that route keep a route entry
// the kernel has moved to its blackhole device, which lives in the host's
// namespace. When their ARP then fails, the kernel builds the "ICMP host
// unreachable" in the host's namespace and routes it by the host's default
// route, off the machine. Dropping those packets at once (as `ip neigh
// flush` does) sends nothing.
func flushPendingNeighbours(l *lab.Lab) error {
	var errs []error
	for _, n := range l.State.Nodes {
		if err := flushPendingIn(lab.NetnsPath(n.Netns)); err != nil {
			errs = append(errs, fmt.Errorf("flush pending neighbours in %s: %w", n.Netns, err))
		}
	}
	return errors.Join(errs...)
}

func flushPendingIn(path string) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return err
	}
	defer func() { _ = ns.Close() }()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	var errs []error
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		neighs, err := h.NeighList(0, fam)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for i := range neighs {
			if neighs[i].State&netlink.NUD_INCOMPLETE == 0 {
				continue
			}
			if err := h.NeighDel(&neighs[i]); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete neighbour %s: %w", neighs[i].IP, err))
			}
		}
	}
	return errors.Join(errs...)
}
