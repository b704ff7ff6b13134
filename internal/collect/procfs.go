package collect

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/netdoctor/netdoctor/internal/facts"
	"github.com/netdoctor/netdoctor/internal/namespace"
)

// globalSysctls are the namespace-wide sysctls netdoctor's rules read.
var globalSysctls = []string{
	"net.ipv4.ip_forward",
	"net.ipv6.conf.all.forwarding",
	"net.bridge.bridge-nf-call-iptables",
	"net.bridge.bridge-nf-call-ip6tables",
	"net.ipv4.ip_local_port_range",
	"net.netfilter.nf_conntrack_max",
	"net.netfilter.nf_conntrack_count",
}

// hostSysctls are global (not per namespace) and only visible from the
// initial network namespace, so they are read by the calling thread, not
// inside the target namespace.
var hostSysctls = []string{"net.core.netdev_max_backlog"}

// perInterfaceSysctls are read for "all", "default" and every interface
// listed under net/ipv4/conf: net.ipv4.conf.IF.NAME.
var perInterfaceSysctls = []string{"rp_filter", "route_localnet"}

// collectProcInNetns reads /proc/sys/net and /proc/net from a thread inside
// the target namespace: both show the namespace of the reading thread (the
// net directory through /proc/thread-self, not /proc/self, which follows
// the process's main thread).
func (c *collector) collectProcInNetns(want map[string]bool) {
	err := namespace.Do(c.nsPath, func() error {
		if want[SectionSysctls] {
			c.readSysctls()
		}
		netDir := c.netDir()
		if want[SectionConntrack] {
			c.readConntrack(netDir)
		}
		if want[SectionSockets] {
			c.readSockets(netDir)
		}
		return nil
	})
	if err != nil {
		for _, s := range []string{SectionSysctls, SectionConntrack, SectionSockets} {
			if want[s] {
				c.fail(s, err)
			}
		}
	}
}

// netDir is the per-namespace /proc/net directory of the calling thread.
func (c *collector) netDir() string {
	for _, d := range []string{filepath.Join(c.opts.ProcRoot, "thread-self", "net"), filepath.Join(c.opts.ProcRoot, "net")} {
		if _, err := os.Stat(d); err == nil {
			return d
		}
	}
	return filepath.Join(c.opts.ProcRoot, "net")
}

// sysctlPath maps net.ipv4.conf.eth0.rp_filter to ProcRoot/sys/net/ipv4/conf/eth0/rp_filter.
// Interface names may contain dots; callers build those paths directly.
func (c *collector) sysctlPath(key string) string {
	return filepath.Join(c.opts.ProcRoot, "sys", strings.ReplaceAll(key, ".", "/"))
}

// readSysctl reads one sysctl, normalising whitespace (tabs in
// ip_local_port_range become one space).
func readSysctl(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.Join(strings.Fields(string(b)), " "), nil
}

func (c *collector) readSysctls() {
	for _, key := range globalSysctls {
		v, err := readSysctl(c.sysctlPath(key))
		if err != nil {
			c.fail("sysctl "+key, c.sysctlError(key, err))
			continue
		}
		c.snap.Sysctls[key] = v
	}
	confDir := filepath.Join(c.opts.ProcRoot, "sys", "net", "ipv4", "conf")
	ents, err := os.ReadDir(confDir)
	if err != nil {
		c.fail("sysctl net.ipv4.conf", fmt.Errorf("list interfaces in %s (%s): %w", confDir, c.nsLabel(), err))
		return
	}
	for _, e := range ents {
		for _, name := range perInterfaceSysctls {
			key := "net.ipv4.conf." + e.Name() + "." + name
			v, err := readSysctl(filepath.Join(confDir, e.Name(), name))
			if err != nil {
				c.fail("sysctl "+key, fmt.Errorf("read sysctl %s in %s: %w", key, c.nsLabel(), err))
				continue
			}
			c.snap.Sysctls[key] = v
		}
	}
}

// sysctlError explains a sysctl that cannot be read; a missing one usually
// means the module that provides it is not loaded.
func (c *collector) sysctlError(key string, err error) error {
	if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read sysctl %s in %s: %w", key, c.nsLabel(), err)
	}
	var module string
	switch {
	case strings.HasPrefix(key, "net.bridge.bridge-nf-"):
		module = "br_netfilter"
	case strings.HasPrefix(key, "net.netfilter.nf_conntrack"):
		module = "nf_conntrack"
	default:
		return fmt.Errorf("sysctl %s not present in %s", key, c.nsLabel())
	}
	if _, serr := os.Stat(filepath.Join(c.opts.SysRoot, "module", module)); serr != nil {
		return fmt.Errorf("sysctl %s not present in %s: module %s is not loaded (modprobe %s)", key, c.nsLabel(), module, module)
	}
	return fmt.Errorf("sysctl %s not present in %s although module %s is loaded", key, c.nsLabel(), module)
}

// readConntrack fills the conntrack section: table size and limit from
// net.netfilter.nf_conntrack_count and _max, per-CPU counters from
// /proc/net/stat/nf_conntrack. Without nf_conntrack loaded none exist and
// the section is left out, with the reason in Errors.
func (c *collector) readConntrack(netDir string) {
	ct := &facts.ConntrackStats{}
	have := false
	for _, f := range []struct {
		key string
		dst *uint64
	}{
		{"net.netfilter.nf_conntrack_count", &ct.Count},
		{"net.netfilter.nf_conntrack_max", &ct.Max},
	} {
		v, err := readSysctl(c.sysctlPath(f.key))
		if err != nil {
			c.fail(SectionConntrack+" "+f.key, c.sysctlError(f.key, err))
			continue
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			c.fail(SectionConntrack+" "+f.key, fmt.Errorf("sysctl %s in %s: %q is not a number", f.key, c.nsLabel(), v))
			continue
		}
		*f.dst = n
		have = true
	}
	p := filepath.Join(netDir, "stat", "nf_conntrack")
	f, err := os.Open(p)
	if err != nil {
		c.fail(SectionConntrack, fmt.Errorf("read conntrack statistics %s in %s: %w", p, c.nsLabel(), err))
	} else {
		per, perr := ParseConntrackStat(f)
		_ = f.Close()
		if perr != nil {
			c.fail(SectionConntrack, fmt.Errorf("parse %s in %s: %w", p, c.nsLabel(), perr))
		} else {
			ct.PerCPU = per
			have = true
		}
	}
	if have {
		c.snap.Conntrack = ct
	}
}

// maxDestinations bounds SocketStats.PerDestination.
const maxDestinations = 100

// readSockets fills Sockets (TCP LISTEN/ESTABLISHED and every UDP socket)
// and SocketStats (all TCP sockets counted).
func (c *collector) readSockets(netDir string) {
	stats := &facts.SocketStats{ByState: map[string]int{}}
	type destKey struct{ proto, local, remote string }
	perDest := map[destKey]int{}
	read := false
	for _, proto := range []string{"tcp", "tcp6", "udp", "udp6"} {
		p := filepath.Join(netDir, proto)
		f, err := os.Open(p)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) && strings.HasSuffix(proto, "6") {
				c.skip("sockets."+proto, "IPv6 is disabled in this kernel ("+p+" absent)")
				continue
			}
			c.fail("sockets."+proto, fmt.Errorf("read %s in %s: %w", p, c.nsLabel(), err))
			continue
		}
		socks, err := ParseProcNetSockets(f, proto)
		_ = f.Close()
		if err != nil {
			c.fail("sockets."+proto, fmt.Errorf("parse %s in %s: %w", p, c.nsLabel(), err))
			continue
		}
		read = true
		for _, s := range socks {
			if strings.HasPrefix(proto, "udp") {
				c.snap.Sockets = append(c.snap.Sockets, s)
				continue
			}
			stats.ByState[proto+" "+s.State]++
			switch s.State {
			case "LISTEN":
				c.snap.Sockets = append(c.snap.Sockets, s)
			case "ESTABLISHED":
				c.snap.Sockets = append(c.snap.Sockets, s)
				fallthrough
			default:
				if s.Remote != "" {
					host, _, _ := net.SplitHostPort(s.Local)
					perDest[destKey{proto, host, s.Remote}]++
				}
			}
		}
	}
	if !read {
		return
	}
	for k, n := range perDest {
		stats.PerDestination = append(stats.PerDestination, facts.DestinationCount{Proto: k.proto, LocalIP: k.local, Remote: k.remote, Count: n})
	}
	sort.Slice(stats.PerDestination, func(i, j int) bool {
		a, b := stats.PerDestination[i], stats.PerDestination[j]
		if a.Count != b.Count {
			return a.Count > b.Count
		}
		if a.Remote != b.Remote {
			return a.Remote < b.Remote
		}
		return a.LocalIP < b.LocalIP
	})
	if len(stats.PerDestination) > maxDestinations {
		stats.PerDestination = stats.PerDestination[:maxDestinations]
	}
	c.snap.SocketStats = stats
}

// readHostSysctls reads hostSysctls from the calling thread's namespace and
// returns them (the caller merges them into Sysctls once the per-namespace
// readers are done).
func (c *collector) readHostSysctls() map[string]string {
	out := map[string]string{}
	for _, key := range hostSysctls {
		v, err := readSysctl(c.sysctlPath(key))
		if err != nil {
			c.fail("sysctl "+key, fmt.Errorf("read sysctl %s (global, readable from the initial network namespace only): %w", key, err))
			continue
		}
		out[key] = v
	}
	return out
}

// collectSoftnet reads /proc/net/softnet_stat (per CPU, not per namespace).
func (c *collector) collectSoftnet() {
	p := filepath.Join(c.opts.ProcRoot, "net", "softnet_stat")
	f, err := os.Open(p)
	if err != nil {
		c.fail(SectionSoftnet, fmt.Errorf("read %s: %w", p, err))
		return
	}
	defer func() { _ = f.Close() }()
	st, err := ParseSoftnetStat(f)
	if err != nil {
		c.fail(SectionSoftnet, fmt.Errorf("parse %s: %w", p, err))
		return
	}
	c.snap.Softnet = st
}
