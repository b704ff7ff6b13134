package agent

import (
	"fmt"
	"os"

	"github.com/vishvananda/netlink"

	"github.com/netdoctor/netdoctor/internal/namespace"
)

// vethPeerNetnsIDs lists, in the node's namespace, the namespace IDs that
// its veths' peers live in (ip -d link: "link-netnsid N").
func vethPeerNetnsIDs(nodeNetns string) (map[int]bool, error) {
	ids := map[int]bool{}
	err := namespace.Do(nodeNetns, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return fmt.Errorf("list links of the node: %w", err)
		}
		for _, l := range links {
			if l.Type() == "veth" && l.Attrs().NetNsID >= 0 {
				ids[l.Attrs().NetNsID] = true
			}
		}
		return nil
	})
	return ids, err
}

// isAttached says whether the namespace at path is the peer side of one of
// the node's veths: its ID as the node's namespace sees it is one of ids.
func isAttached(nodeNetns, path string, ids map[int]bool) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer func() { _ = f.Close() }()
	var id int
	err = namespace.Do(nodeNetns, func() error {
		var err error
		id, err = netlink.GetNetNsIdByFd(int(f.Fd()))
		return err
	})
	if err != nil {
		return false, fmt.Errorf("namespace id of %s: %w", path, err)
	}
	return id >= 0 && ids[id], nil
}
