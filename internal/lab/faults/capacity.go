package faults

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/netdoctor/netdoctor/internal/collect"
	"github.com/netdoctor/netdoctor/internal/command"
	"github.com/netdoctor/netdoctor/internal/lab"
	"github.com/netdoctor/netdoctor/internal/lab/proc"
	"github.com/netdoctor/netdoctor/internal/namespace"
)

// Capacity faults of seed 002 (host group): a node that runs out of ephemeral ports towards
// one destination, and a node whose interface queue drops packets while traffic runs. Both
// are held by a lab process in the node's namespace (`netdoctor lab portfill`, `netdoctor lab
// nicqueue`, marked with the lab's name) that Heal ends.
//
// nic-queue-drops, tried in namespaces of our own on this kernel (6.18): a veth whose peer is
// down counts what is sent to it as tx drops, but the kernel then takes its carrier away and
// a tc redirect to it is refused before the device (counted by the action only); a veth with
// GRO (NAPI ring) never overflowed under two UDP floods of 900k packets a second; qdisc drops
// (tbf) show in `tc -s qdisc`, not in the link counters the node rule reads. What does
// count in the link counters is a TAP device whose reader stopped: its ring fills up to
// txqueuelen and every further frame is dropped and counted as tx_dropped on it, the way a
// NIC ring its driver no longer drains does. The injection sends a random twentieth of what the
// node's uplink transmits into such a queue (cls_bpf with a classic BPF `ld rand`, mirred
// redirect: the only classifier/action pair this kernel has besides u32), so the node's
// traffic sees random loss, and a steady stream from the node keeps the counter rising.

// More probe kinds, for the capacity faults.
const (
	// NodeTCPExt: HTTP over TCP from the node From itself to the external host's web server.
	NodeTCPExt ProbeKind = "node-tcp-ext"
	// NodeDropsQuiet: the rx/tx drop counters of node From's interfaces (tx of tunnel devices
	// left out, as the node rule does) do not rise over a few seconds (a state check).
	NodeDropsQuiet ProbeKind = "node-drops-quiet"
	// PodPingBurst: 200 ICMP echoes 10 ms apart from a pod on From to the web pod on To, all
	// answered (loss under load shows here, a single ping rarely sees it).
	PodPingBurst ProbeKind = "pod-ping-burst"
)

const (
	portRangeKey = "net.ipv4.ip_local_port_range"
	// faultPortRange is the narrow range ephemeral-ports-exhausted sets: 200 ports.
	faultPortRange = "60000 60199"
	// nicQueueTap is the stuck queue of nic-queue-drops.
	nicQueueTap = "ndq0"
	// nicQueueLen is its ring (txqueuelen): full after a few frames.
	nicQueueLen = 8
	// nicDropFraction is the share of the uplink's transmitted IPv4 packets sent into the queue.
	nicDropFraction = 1.0 / 20
	// nicLoadRate is the node's steady stream (UDP packets a second to the external host's
	// discard port) that keeps the drop counter rising between two checks.
	nicLoadRate = 200
	// nicMinDrops is how far tx_dropped must rise for the injection to count.
	nicMinDrops = 10
	// burstCount is the number of echoes of PodPingBurst.
	burstCount = 200
)

func init() {
	Register(Fault{
		ID: "ephemeral-ports-exhausted", Group: "host",
		Summary: "the node's ip_local_port_range is narrowed to 200 ports and a process on the node holds 200 connections to the external host's web server: " +
			"new connections from the node to it fail with EADDRNOTAVAIL; connections to other destinations, and from pods (their own namespaces), still work",
		Injection: "sysctl -w net.ipv4.ip_local_port_range=\"" + faultPortRange + "\" (in the node's namespace); " +
			"`netdoctor lab portfill --to EXT_IP:80 --max 200` in the node's namespace (opens and holds connections until the range is used up)",
		Checks: []Check{
			{Kind: NodeTCPExt, From: Faulted, Broken: true},
			{Kind: NodeTCPExt, From: Peer},
			{Kind: NodeService, From: Faulted, To: Peer},
			{Kind: PodTCP, From: Faulted, To: Peer},
		},
		Inject: injectPortsExhausted,
		Heal:   healPortsExhausted,
	})
	Register(Fault{
		ID: "nic-queue-drops", Group: "host",
		Summary: "a random twentieth (5%) of what the node's uplink transmits goes into a queue nobody drains (a TAP device whose reader stopped, txqueuelen 8): " +
			"it is dropped and counted as tx_dropped while traffic runs (a steady 200 packets a second from the node); the node's traffic sees random loss: TCP still gets through (retransmits), a UDP query answered from the node (a CoreDNS pod there) is lost now and then",
		Injection: "`netdoctor lab nicqueue --tap " + nicQueueTap + " --qlen 8 --to EXT_IP:9 --rate 200` in the node's namespace; " +
			"tc qdisc add dev eth0 clsact; tc filter add dev eth0 egress protocol ip prio 1 bpf bytecode \"" + RandomMatchBytecode(nicDropFraction) +
			"\" action mirred egress redirect dev " + nicQueueTap,
		Checks: []Check{
			{Kind: NodeDropsQuiet, From: Faulted, Broken: true},
			{Kind: NodeDropsQuiet, From: Peer},
			{Kind: PodPingBurst, From: Faulted, To: Peer, Broken: true},
			{Kind: PodPingBurst, From: Other, To: Peer},
			{Kind: PodTCP, From: Faulted, To: Peer},
		},
		Inject: injectNICQueue,
		Heal:   healNICQueue,
	})
}

// PortRangeSize is the number of ports of an ip_local_port_range value ("60000 60199": 200).
func PortRangeSize(v string) (int, error) {
	f := strings.Fields(v)
	if len(f) != 2 {
		return 0, fmt.Errorf("port range %q: want two numbers", v)
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || lo < 1 || hi > 65535 || hi < lo {
		return 0, fmt.Errorf("port range %q: want LOW HIGH within 1-65535", v)
	}
	return hi - lo + 1, nil
}

// RandomMatchBytecode is a classic BPF program, in tc's `bpf bytecode` form, that matches a
// packet with probability fraction (0 < fraction < 1): it loads a random 32-bit number (the
// SKF_AD_RANDOM ancillary load) and matches when it is at least 2^32 × (1 - fraction).
func RandomMatchBytecode(fraction float64) string {
	const (
		ldAbsW  = 0x20            // BPF_LD | BPF_W | BPF_ABS
		jgeK    = 0x35            // BPF_JMP | BPF_JGE | BPF_K
		retK    = 0x06            // BPF_RET | BPF_K
		adRand  = 0xfffff000 + 56 // SKF_AD_OFF + SKF_AD_RANDOM
		matchOK = 0xffffffff      // -1: match, the filter's actions run
	)
	threshold := uint64((1 - fraction) * (1 << 32))
	if threshold > 0xffffffff {
		threshold = 0xffffffff
	}
	return fmt.Sprintf("4,%d 0 0 %d,%d 0 1 %d,%d 0 0 %d,%d 0 0 0", ldAbsW, uint32(adRand), jgeK, threshold, retK, uint32(matchOK), retK)
}

// faultProcFiles are the state and log files of a fault's lab process on node.
func faultProcFiles(c lab.Config, name, node string) (state, log string) {
	base := "fault-" + name + "-" + node
	return filepath.Join(lab.ProcDir(c.StateDir()), base+".json"), filepath.Join(lab.LogDir(c.StateDir()), base+".log")
}

// startFaultProc starts `netdoctor lab ARGS...` in the target node's namespace, marked with the
// lab's name, and returns its state file.
func startFaultProc(t Target, name string, args []string) (string, error) {
	c := t.Lab.State.Config
	state, logf := faultProcFiles(c, name, t.Node)
	if c.SelfBin == "" {
		return "", errors.New("the lab has no netdoctor binary recorded (SelfBin) to run " + name)
	}
	_, err := proc.Start(proc.Spec{
		Name: name + "-" + t.Node, Path: c.SelfBin, Args: append([]string{"lab", name}, args...),
		Netns: t.NetnsPath(), LogFile: logf, StateFile: state, Owner: c.Name,
	})
	return state, err
}

// stopFaultProc ends the lab process recorded in state (if still there) and removes the file.
func stopFaultProc(state string) error {
	info, err := proc.Load(state)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if proc.Alive(info) {
		if err := proc.Stop(info, 5*time.Second); err != nil {
			return fmt.Errorf("stop %s (pid %d): %w", info.Name, info.PID, err)
		}
	}
	if err := os.Remove(state); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", state, err)
	}
	return nil
}

// ConnectionsTo counts the TCP sockets (any state but LISTEN) of the namespace at netnsPath
// whose remote end is dst, as the node collector counts them per destination.
func ConnectionsTo(netnsPath string, dst netip.AddrPort) (int, error) {
	n := 0
	err := namespace.Do(netnsPath, func() error {
		f, err := os.Open("/proc/thread-self/net/tcp")
		if err != nil {
			return err
		}
		defer func() { _ = f.Close() }()
		socks, err := collect.ParseProcNetSockets(f, "tcp")
		if err != nil {
			return err
		}
		for _, s := range socks {
			if s.State != "LISTEN" && s.Remote == dst.String() {
				n++
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("count connections to %s in %s: %w", dst, netnsPath, err)
	}
	return n, nil
}

func injectPortsExhausted(ctx context.Context, t Target) (map[string]string, error) {
	c := t.Lab.State.Config
	dst := netip.AddrPortFrom(c.ExtIP(), lab.ExtPort)
	size, err := PortRangeSize(faultPortRange)
	if err != nil {
		return nil, err
	}
	data, err := setSysctl(t, portRangeKey, faultPortRange)
	if err != nil {
		return nil, err
	}
	state, err := startFaultProc(t, "portfill", []string{"--to", dst.String(), "--max", strconv.Itoa(size)})
	data["proc"] = state
	if err != nil {
		return data, err
	}
	var held int
	err = waitFor(ctx, 60*time.Second, "the connections from "+t.Node+" to "+dst.String()+" to use the "+strconv.Itoa(size)+" ports", func() (bool, string) {
		var cerr error
		if held, cerr = ConnectionsTo(t.NetnsPath(), dst); cerr != nil {
			return false, cerr.Error()
		}
		return held >= size, strconv.Itoa(held) + " connections"
	})
	data["held"] = strconv.Itoa(held)
	return data, err
}

func healPortsExhausted(ctx context.Context, t Target, d map[string]string) error {
	state := d["proc"]
	if state == "" {
		state, _ = faultProcFiles(t.Lab.State.Config, "portfill", t.Node)
	}
	var errs []error
	if err := stopFaultProc(state); err != nil {
		errs = append(errs, err)
	}
	old := d["old"]
	if old == "" {
		old = "32768 60999" // the kernel's default
	}
	if err := lab.SetSysctl(t.Netns(), portRangeKey, old); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	// portfill resets its connections as it ends (no TIME_WAIT): wait until they are gone.
	dst := netip.AddrPortFrom(t.Lab.State.Config.ExtIP(), lab.ExtPort)
	return waitFor(ctx, 30*time.Second, "the held connections from "+t.Node+" to "+dst.String()+" to close", func() (bool, string) {
		n, err := ConnectionsTo(t.NetnsPath(), dst)
		if err != nil {
			return false, err.Error()
		}
		return n == 0, strconv.Itoa(n) + " left"
	})
}

// LinkDrops are the drop counters of a namespace's interfaces the nic-queue-drops rule reads,
// summed: rx and tx dropped, rx fifo and missed errors, tunnel devices' tx drops left out.
type LinkDrops struct {
	Rx, Tx, Fifo, Missed uint64
	// Links names the interfaces with any drop and their counters.
	Links map[string]string
}

// Total is the sum of the counters.
func (d LinkDrops) Total() uint64 { return d.Rx + d.Tx + d.Fifo + d.Missed }

// String lists the interfaces with drops.
func (d LinkDrops) String() string {
	if len(d.Links) == 0 {
		return "no drops"
	}
	var parts []string
	for _, name := range sortedKeys(d.Links) {
		parts = append(parts, name+": "+d.Links[name])
	}
	return strings.Join(parts, "; ")
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// tunnelTypes are the link types whose tx drops the node rule leaves out.
var tunnelTypes = map[string]bool{"vxlan": true, "geneve": true, "wireguard": true, "ipip": true}

// ReadLinkDrops reads the drop counters of the interfaces of the namespace at netnsPath.
func ReadLinkDrops(netnsPath string) (LinkDrops, error) {
	d := LinkDrops{Links: map[string]string{}}
	var links []netlink.Link
	err := namespace.Do(netnsPath, func() error {
		h, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		links, err = h.LinkList()
		return err
	})
	if err != nil {
		return d, fmt.Errorf("list links in %s: %w", netnsPath, err)
	}
	for _, l := range links {
		s := l.Attrs().Statistics
		if s == nil {
			continue
		}
		tx := s.TxDropped
		if tunnelTypes[l.Type()] {
			tx = 0
		}
		d.Rx += s.RxDropped
		d.Tx += tx
		d.Fifo += s.RxFifoErrors
		d.Missed += s.RxMissedErrors
		if s.RxDropped+tx+s.RxFifoErrors+s.RxMissedErrors > 0 {
			d.Links[l.Attrs().Name] = fmt.Sprintf("rx_dropped %d, tx_dropped %d, rx_fifo %d, rx_missed %d", s.RxDropped, tx, s.RxFifoErrors, s.RxMissedErrors)
		}
	}
	return d, nil
}

// readTwice reads counters, waits window (or until ctx ends), and reads them again.
func readTwice[T any](ctx context.Context, window time.Duration, read func() (T, error)) (was, now T, err error) {
	if was, err = read(); err != nil {
		return was, now, err
	}
	select {
	case <-ctx.Done():
		return was, now, ctx.Err()
	case <-time.After(window):
	}
	now, err = read()
	return was, now, err
}

// DropsQuiet fails if the interface drop counters of the namespace at netnsPath rise within window.
func DropsQuiet(ctx context.Context, netnsPath string, window time.Duration) error {
	was, now, err := readTwice(ctx, window, func() (LinkDrops, error) { return ReadLinkDrops(netnsPath) })
	if err != nil {
		return err
	}
	if now.Total() > was.Total() {
		return fmt.Errorf("interface drops rose by %d in %s (%s)", now.Total()-was.Total(), window, now)
	}
	return nil
}

// tapTxDropped reads tx_dropped of link in the namespace at netnsPath; ok is false without it.
func tapTxDropped(netnsPath, link string) (drops uint64, up, ok bool, err error) {
	err = namespace.Do(netnsPath, func() error {
		h, herr := netlink.NewHandle()
		if herr != nil {
			return herr
		}
		defer h.Close()
		l, lerr := h.LinkByName(link)
		if lerr != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(lerr, &nf) {
				return nil
			}
			return lerr
		}
		ok = true
		up = l.Attrs().Flags&net.FlagUp != 0
		if s := l.Attrs().Statistics; s != nil {
			drops = s.TxDropped
		}
		return nil
	})
	if err != nil {
		err = fmt.Errorf("read %s in %s: %w", link, netnsPath, err)
	}
	return drops, up, ok, err
}

// AddRandomRedirect makes dev (in the namespace at netnsPath) send a random fraction of the
// IPv4 packets it transmits to the device to instead (clsact egress, cls_bpf, mirred).
func AddRandomRedirect(ctx context.Context, netnsPath, dev, to string, fraction float64) error {
	if _, err := command.Run(ctx, command.Cmd{Name: "tc", Args: []string{"qdisc", "add", "dev", dev, "clsact"}, Netns: netnsPath}); err != nil {
		return fmt.Errorf("add clsact to %s: %w", dev, err)
	}
	args := []string{"filter", "add", "dev", dev, "egress", "protocol", "ip", "prio", "1", "bpf", "bytecode", RandomMatchBytecode(fraction),
		"action", "mirred", "egress", "redirect", "dev", to}
	if _, err := command.Run(ctx, command.Cmd{Name: "tc", Args: args, Netns: netnsPath}); err != nil {
		_ = RemoveRandomRedirect(ctx, netnsPath, dev)
		return fmt.Errorf("redirect from %s to %s: %w", dev, to, err)
	}
	return nil
}

// RemoveRandomRedirect removes dev's clsact qdisc and its filters (nothing to do without one).
func RemoveRandomRedirect(ctx context.Context, netnsPath, dev string) error {
	out, err := command.Output(ctx, netnsPath, "tc", "qdisc", "show", "dev", dev)
	if err != nil {
		return fmt.Errorf("list qdiscs of %s: %w", dev, err)
	}
	if !strings.Contains(string(out), "qdisc clsact") {
		return nil
	}
	if _, err := command.Run(ctx, command.Cmd{Name: "tc", Args: []string{"qdisc", "del", "dev", dev, "clsact"}, Netns: netnsPath}); err != nil {
		return fmt.Errorf("remove clsact from %s: %w", dev, err)
	}
	return nil
}

func injectNICQueue(ctx context.Context, t Target) (map[string]string, error) {
	c := t.Lab.State.Config
	out, err := command.Output(ctx, t.NetnsPath(), "tc", "qdisc", "show", "dev", lab.UplinkName)
	if err != nil {
		return nil, fmt.Errorf("list qdiscs of %s on %s: %w", lab.UplinkName, t.Node, err)
	}
	if strings.Contains(string(out), "qdisc clsact") {
		return nil, fmt.Errorf("%s of %s already has a clsact qdisc: not ours to replace", lab.UplinkName, t.Node)
	}
	dst := netip.AddrPortFrom(c.ExtIP(), 9)
	state, err := startFaultProc(t, "nicqueue", []string{"--tap", nicQueueTap, "--qlen", strconv.Itoa(nicQueueLen),
		"--to", dst.String(), "--rate", strconv.Itoa(nicLoadRate)})
	data := map[string]string{"proc": state}
	if err != nil {
		return data, err
	}
	if err := waitFor(ctx, 30*time.Second, "queue "+nicQueueTap+" on "+t.Node, func() (bool, string) {
		_, up, ok, err := tapTxDropped(t.NetnsPath(), nicQueueTap)
		if err != nil {
			return false, err.Error()
		}
		return ok && up, "not there and up yet"
	}); err != nil {
		return data, err
	}
	before, _, _, err := tapTxDropped(t.NetnsPath(), nicQueueTap)
	if err != nil {
		return data, err
	}
	if err := AddRandomRedirect(ctx, t.NetnsPath(), lab.UplinkName, nicQueueTap, nicDropFraction); err != nil {
		return data, fmt.Errorf("on %s: %w", t.Node, err)
	}
	data["redirect"] = lab.UplinkName
	var now uint64
	err = waitFor(ctx, 30*time.Second, "tx_dropped of "+nicQueueTap+" on "+t.Node+" to rise by "+strconv.Itoa(nicMinDrops), func() (bool, string) {
		var rerr error
		if now, _, _, rerr = tapTxDropped(t.NetnsPath(), nicQueueTap); rerr != nil {
			return false, rerr.Error()
		}
		return now >= before+nicMinDrops, fmt.Sprintf("tx_dropped %d -> %d", before, now)
	})
	data["drops"] = fmt.Sprintf("%d -> %d", before, now)
	return data, err
}

func healNICQueue(ctx context.Context, t Target, d map[string]string) error {
	var errs []error
	if err := RemoveRandomRedirect(ctx, t.NetnsPath(), lab.UplinkName); err != nil {
		errs = append(errs, fmt.Errorf("on %s: %w", t.Node, err))
	}
	state := d["proc"]
	if state == "" {
		state, _ = faultProcFiles(t.Lab.State.Config, "nicqueue", t.Node)
	}
	if err := stopFaultProc(state); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	// The queue goes with its process; then the node's counters must stay still.
	return waitFor(ctx, 30*time.Second, "the drops on "+t.Node+" to stop", func() (bool, string) {
		if _, _, ok, err := tapTxDropped(t.NetnsPath(), nicQueueTap); err != nil || ok {
			return false, nicQueueTap + " still there"
		}
		if err := DropsQuiet(ctx, t.NetnsPath(), quietWindow); err != nil {
			return false, err.Error()
		}
		return true, ""
	})
}

// PingBurst sends count ICMP echoes 10 ms apart from the namespace at netnsPath to ip and
// fails unless every one is answered.
func PingBurst(ctx context.Context, netnsPath, ip string, count int) error {
	out, err := command.Output(ctx, netnsPath, "ping", "-n", "-q", "-c", strconv.Itoa(count), "-i", "0.01", "-W", "1", ip)
	sent, got, perr := ParsePingSummary(string(out))
	if perr != nil {
		if err != nil {
			return fmt.Errorf("ping %s: %w", ip, err)
		}
		return perr
	}
	if got < sent {
		return fmt.Errorf("ping burst to %s: %d of %d echoes answered (%d lost)", ip, got, sent, sent-got)
	}
	return nil
}

// ParsePingSummary reads "N packets transmitted, M received" from iputils ping's output.
func ParsePingSummary(out string) (sent, received int, err error) {
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, " packets transmitted, ") {
			continue
		}
		f := strings.Split(line, ", ")
		if len(f) < 2 {
			break
		}
		s, err1 := strconv.Atoi(strings.TrimSuffix(f[0], " packets transmitted"))
		r, err2 := strconv.Atoi(strings.TrimSuffix(strings.TrimSuffix(f[1], " packets received"), " received"))
		if err1 != nil || err2 != nil {
			break
		}
		return s, r, nil
	}
	return 0, 0, fmt.Errorf("no ping summary line in %q", out)
}

// probeCapacity runs the probe kinds of capacity.go.
func (p *Prober) probeCapacity(ctx context.Context, kind ProbeKind, src, dst PodRef) error {
	cfg := p.L.State.Config
	nodeNS := lab.NetnsPath(lab.NetnsPrefix(cfg.Name) + src.Node)
	switch kind {
	case NodeTCPExt:
		return HTTPGet(ctx, nodeNS, net.JoinHostPort(cfg.ExtIP().String(), strconv.Itoa(lab.ExtPort)), "pod "+lab.ExtServeName)
	case NodeDropsQuiet:
		return DropsQuiet(ctx, nodeNS, quietWindow)
	case PodPingBurst:
		return PingBurst(ctx, src.Netns, dst.IP, burstCount)
	}
	return fmt.Errorf("unknown probe kind %q", kind)
}
