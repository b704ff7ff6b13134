package collect

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/netdoctor/netdoctor/internal/facts"
	"github.com/netdoctor/netdoctor/internal/namespace"
)

// Section names accepted in Options.Sections. They are also the keys (or key
// prefixes) of NodeSnapshot.Errors and NodeSnapshot.Skipped.
const (
	SectionLinks     = "links"
	SectionAddresses = "addresses"
	SectionRoutes    = "routes"
	SectionRules     = "rules"
	SectionNeighbors = "neighbors"
	SectionFDB       = "fdb"
	SectionQdiscs    = "qdiscs"
	SectionSysctls   = "sysctls"
	SectionConntrack = "conntrack"
	SectionSoftnet   = "softnet"
	SectionSockets   = "sockets"
	SectionNetfilter = "netfilter"
	SectionIPVS      = "ipvs"
	SectionProcesses = "processes"
	SectionFiles     = "files"
	SectionKernel    = "kernel"
)

// AllSections lists every section in collection order.
var AllSections = []string{
	SectionLinks, SectionAddresses, SectionRoutes, SectionRules, SectionNeighbors, SectionFDB,
	SectionQdiscs, SectionSysctls, SectionConntrack, SectionSoftnet, SectionSockets, SectionNetfilter,
	SectionIPVS, SectionProcesses, SectionFiles, SectionKernel,
}

// Options say what to collect and where from.
type Options struct {
	// Netns is the target network namespace: a name under /var/run/netns, a
	// path, "pid:N" (or a bare number), or "" for the current namespace.
	Netns string
	// ProcRoot is where procfs is mounted (default /proc). /proc/sys and
	// /proc/net are read through it from a thread inside the target netns.
	ProcRoot string
	// SysRoot is where sysfs is mounted (default /sys); used to explain
	// missing sysctls (is br_netfilter loaded?).
	SysRoot string
	// RootDir prefixes the configuration files read verbatim
	// (/run/flannel/subnet.env, /etc/cni/net.d); default "/".
	RootDir string
	// NodeName names the node in the snapshot; default the hostname.
	NodeName string
	// Sections restricts collection to these sections (see AllSections);
	// empty means all.
	Sections []string
}

// Collect builds a node snapshot of the namespace named by opts.Netns.
// Sections run concurrently; a failing section is recorded in the
// snapshot's Errors and the others go on. The returned error is non-nil only
// when nothing can be collected at all: an unknown namespace or an unknown
// section name.
func Collect(ctx context.Context, opts Options) (*facts.NodeSnapshot, error) {
	if opts.ProcRoot == "" {
		opts.ProcRoot = "/proc"
	}
	if opts.SysRoot == "" {
		opts.SysRoot = "/sys"
	}
	if opts.RootDir == "" {
		opts.RootDir = "/"
	}
	want := map[string]bool{}
	for _, s := range opts.Sections {
		if !slices.Contains(AllSections, s) {
			return nil, fmt.Errorf("unknown section %q: known sections are %s", s, strings.Join(AllSections, ", "))
		}
		want[s] = true
	}
	if len(want) == 0 {
		for _, s := range AllSections {
			want[s] = true
		}
	}
	nsPath, err := namespace.Resolve(opts.Netns)
	if err != nil {
		return nil, err
	}
	node := opts.NodeName
	if node == "" {
		node, _ = os.Hostname()
	}
	c := &collector{
		opts:   opts,
		nsPath: nsPath,
		snap: &facts.NodeSnapshot{
			Version:     facts.NodeSnapshotVersion,
			Node:        node,
			Netns:       opts.Netns,
			CollectedAt: time.Now().UTC(),
			Links:       []facts.Link{},
			Addresses:   []facts.Address{},
			Routes:      []facts.Route{},
			Rules:       []facts.PolicyRule{},
			Neighbors:   []facts.Neighbor{},
			FDB:         []facts.FDBEntry{},
			Sysctls:     map[string]string{},
			Sockets:     []facts.Socket{},
			Processes:   []facts.Process{},
		},
	}
	c.snap.NetnsInode = netnsInode(nsPath)

	var wg sync.WaitGroup
	run := func(f func(context.Context)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(ctx)
		}()
	}
	netlinkWanted := want[SectionLinks] || want[SectionAddresses] || want[SectionRoutes] ||
		want[SectionRules] || want[SectionNeighbors] || want[SectionFDB] || want[SectionQdiscs] || want[SectionIPVS]
	if netlinkWanted {
		run(func(context.Context) { c.collectNetlink(want) })
	}
	if want[SectionSysctls] || want[SectionConntrack] || want[SectionSockets] {
		run(func(context.Context) { c.collectProcInNetns(want) })
	}
	var hostSysctls map[string]string
	if want[SectionSysctls] {
		run(func(context.Context) { hostSysctls = c.readHostSysctls() })
	}
	if want[SectionSoftnet] {
		run(func(context.Context) { c.collectSoftnet() })
	}
	if want[SectionNetfilter] {
		run(c.collectNetfilter)
	}
	var ipvs *facts.IPVS
	if want[SectionIPVS] {
		run(func(context.Context) { ipvs = c.collectIPVS() })
	}
	if want[SectionProcesses] {
		run(func(context.Context) { c.collectProcesses() })
	}
	if want[SectionFiles] {
		run(func(context.Context) { c.collectFiles() })
	}
	if want[SectionKernel] {
		run(func(context.Context) { c.collectKernel() })
	}
	wg.Wait()

	for k, v := range hostSysctls {
		c.snap.Sysctls[k] = v
	}
	if want[SectionIPVS] {
		c.snap.IPVS = withKubeIPVSAddresses(ipvs, c.snap.Addresses)
	}
	if !want[SectionAddresses] {
		c.snap.Addresses = []facts.Address{}
	}
	if err := ctx.Err(); err != nil {
		c.fail("collect", fmt.Errorf("collection interrupted: %w", err))
	}
	if len(c.snap.Errors) == 0 {
		c.snap.Errors = nil
	}
	return c.snap, nil
}

// collector carries one collection's state. Sections write their own fields
// of snap; Errors and Skipped are shared and guarded by mu.
type collector struct {
	opts   Options
	nsPath string // "" = current namespace
	mu     sync.Mutex
	snap   *facts.NodeSnapshot
}

// nsLabel names the target namespace in messages.
func (c *collector) nsLabel() string {
	if c.opts.Netns == "" {
		return "current netns"
	}
	return "netns " + c.opts.Netns
}

// fail records that a section could not be collected.
func (c *collector) fail(section string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.snap.Errors == nil {
		c.snap.Errors = map[string]string{}
	}
	c.snap.Errors[section] = err.Error()
}

// skip records that a section does not exist on this system.
func (c *collector) skip(section, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.snap.Skipped == nil {
		c.snap.Skipped = map[string]string{}
	}
	c.snap.Skipped[section] = reason
}

// netnsInode returns the inode of the namespace at path ("" = this
// process's), the number shown by readlink /proc/PID/ns/net.
func netnsInode(path string) uint64 {
	if path == "" {
		path = "/proc/thread-self/ns/net"
	}
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

// collectKernel reads the kernel release (uname -r) from
// ProcRoot/sys/kernel/osrelease, or from uname(2) when ProcRoot is the live
// /proc and the file cannot be read.
func (c *collector) collectKernel() {
	b, err := os.ReadFile(c.opts.ProcRoot + "/sys/kernel/osrelease")
	if err == nil {
		c.snap.Kernel = strings.TrimSpace(string(b))
		return
	}
	var u syscall.Utsname
	if c.opts.ProcRoot != "/proc" || syscall.Uname(&u) != nil {
		c.fail(SectionKernel, fmt.Errorf("read kernel release: %w", err))
		return
	}
	var sb strings.Builder
	for _, ch := range u.Release {
		if ch == 0 {
			break
		}
		sb.WriteByte(byte(ch))
	}
	c.snap.Kernel = sb.String()
}
