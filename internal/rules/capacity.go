package rules

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/netdoctor/netdoctor/internal/facts"
	"github.com/netdoctor/netdoctor/internal/finding"
)

func init() {
	Register(Rule{
		ID:       "conntrack-insert-failed",
		Severity: finding.Warning,
		Title:    "conntrack insert_failed and drop counters are zero (or not rising)",
		Needs:    []string{"conntrack"},
		Docs:     "https://github.com/kubernetes/kubernetes/issues/56903",
		Run:      runConntrackInsertFailed,
	})
	Register(Rule{
		ID:       "conntrack-table-full",
		Severity: finding.Critical,
		Title:    "the conntrack table is below 75% of nf_conntrack_max",
		Needs:    []string{"conntrack"},
		Docs:     "https://docs.kernel.org/networking/nf_conntrack-sysctl.html",
		Run:      runConntrackFull,
	})
	Register(Rule{
		ID:       "nic-queue-drops",
		Severity: finding.Warning,
		Title:    "no interface rx/tx drops and no softnet backlog drops",
		Needs:    []string{"links"},
		Docs:     "https://docs.kernel.org/networking/scaling.html",
		Run:      runNICDrops,
	})
	Register(Rule{
		ID:       "ephemeral-ports-exhausted",
		Severity: finding.Warning,
		Title:    "connections to one destination use under 80% of ip_local_port_range",
		Needs:    []string{"sockets", "sysctls"},
		Docs:     "https://docs.kernel.org/networking/ip-sysctl.html (ip_local_port_range)",
		Run:      runEphemeralPorts,
	})
}

type ctSums struct{ insertFailed, drop, earlyDrop uint64 }

func sumCT(c *facts.ConntrackStats) ctSums {
	var s ctSums
	for _, p := range c.PerCPU {
		s.insertFailed += p.InsertFailed
		s.drop += p.Drop
		s.earlyDrop += p.EarlyDrop
	}
	return s
}

func runConntrackInsertFailed(in *Input) Result {
	c := in.Node.Conntrack
	if c == nil || len(c.PerCPU) == 0 {
		return Skip("no conntrack statistics in the snapshot (nf_conntrack not loaded, or /proc/net/stat/nf_conntrack unreadable)")
	}
	now := sumCT(c)
	fix := "for the DNS 5 s delays: make DNS clients avoid the UDP race (pod dnsConfig option `single-request-reopen` or `use-vc`, NodeLocal DNSCache), and keep the kernel current (the race fixes landed in 5.0+); for drops, raise nf_conntrack_max; verify: `conntrack -S` shows insert_failed and drop no longer rising"
	if b := in.Before; b != nil && b.Conntrack != nil && len(b.Conntrack.PerCPU) > 0 {
		was := sumCT(b.Conntrack)
		dIF, dDrop := delta(now.insertFailed, was.insertFailed), delta(now.drop, was.drop)
		if dIF == 0 && dDrop == 0 {
			return Pass("insert_failed %d and drop %d did not rise between the snapshots", now.insertFailed, now.drop)
		}
		return Result{Findings: []finding.Finding{{
			Subject: "conntrack",
			Message: fmt.Sprintf("conntrack insert_failed rose by %d and drop by %d between the two snapshots: connections (typically parallel UDP DNS queries racing through DNAT) are being dropped, which shows as 5 s DNS delays", dIF, dDrop),
			Evidence: append([]string{
				fmt.Sprintf("insert_failed %d -> %d (+%d), drop %d -> %d (+%d), early_drop %d -> %d", was.insertFailed, now.insertFailed, dIF, was.drop, now.drop, dDrop, was.earlyDrop, now.earlyDrop),
				fmt.Sprintf("snapshots at %s and %s", b.CollectedAt.Format("15:04:05"), in.Node.CollectedAt.Format("15:04:05")),
			}, perCPULines(c)...),
			Remediation: fix,
		}}}
	}
	if now.insertFailed == 0 && now.drop == 0 {
		return Pass("insert_failed 0, drop 0")
	}
	return Result{Findings: []finding.Finding{{
		Subject:     "conntrack",
		Message:     fmt.Sprintf("conntrack has failed %d inserts and dropped %d packets since boot: the UDP DNAT race (5 s DNS delays) or a full table; run `netdoctor analyze` with --before on two snapshots to see whether they are rising now", now.insertFailed, now.drop),
		Evidence:    append([]string{fmt.Sprintf("insert_failed %d, drop %d, early_drop %d (sum over %d CPUs, conntrack -S)", now.insertFailed, now.drop, now.earlyDrop, len(c.PerCPU))}, perCPULines(c)...),
		Remediation: fix,
	}}}
}

func perCPULines(c *facts.ConntrackStats) []string {
	var out []string
	for _, p := range c.PerCPU {
		if p.InsertFailed == 0 && p.Drop == 0 {
			continue
		}
		out = append(out, fmt.Sprintf("cpu=%d found=%d invalid=%d insert=%d insert_failed=%d drop=%d early_drop=%d error=%d search_restart=%d", p.CPU, p.Found, p.Invalid, p.Insert, p.InsertFailed, p.Drop, p.EarlyDrop, p.Error, p.SearchRestart))
	}
	return out
}

func delta(now, was uint64) uint64 {
	if now < was {
		return now // counter reset (reboot): count from zero
	}
	return now - was
}

func runConntrackFull(in *Input) Result {
	c := in.Node.Conntrack
	if c == nil || c.Max == 0 {
		return Skip("nf_conntrack_max not in the snapshot (nf_conntrack not loaded?)")
	}
	pct := float64(c.Count) * 100 / float64(c.Max)
	if pct < 75 {
		return Pass("conntrack %d/%d (%.0f%%)", c.Count, c.Max, pct)
	}
	sev := finding.Warning
	msg := fmt.Sprintf("the conntrack table is %.0f%% full (%d of %d): past 100%% new connections are dropped at random", pct, c.Count, c.Max)
	if pct >= 90 {
		sev = finding.Critical
		msg = fmt.Sprintf("the conntrack table is %.0f%% full (%d of %d): new connections are about to be dropped (\"nf_conntrack: table full, dropping packet\" in dmesg)", pct, c.Count, c.Max)
	}
	ev := []string{fmt.Sprintf("net.netfilter.nf_conntrack_count = %d", c.Count), fmt.Sprintf("net.netfilter.nf_conntrack_max = %d", c.Max)}
	if s := sumCT(c); s.earlyDrop+s.drop > 0 {
		ev = append(ev, fmt.Sprintf("early_drop %d, drop %d (conntrack -S)", s.earlyDrop, s.drop))
	}
	return Result{Findings: []finding.Finding{{
		Severity: sev,
		Subject:  "nf_conntrack",
		Message:  msg,
		Evidence: ev,
		Remediation: fmt.Sprintf("raise the limit: `sysctl -w net.netfilter.nf_conntrack_max=%d` (kube-proxy's --conntrack-max-per-core sets it at start), and find who opens so many connections: `conntrack -L | awk '{print $3,$4,$5}' | sort | uniq -c | sort -rn | head`; "+
			"verify: nf_conntrack_count stays well below nf_conntrack_max", c.Max*2),
	}}}
}

func runNICDrops(in *Input) Result {
	type row struct {
		name       string
		rx, tx     uint64
		fifo, miss uint64
	}
	prev := map[string]*facts.LinkStats{}
	var prevSoft map[int]uint64
	if b := in.Before; b != nil {
		for i := range b.Links {
			if b.Links[i].Stats != nil {
				prev[b.Links[i].Name] = b.Links[i].Stats
			}
		}
		prevSoft = map[int]uint64{}
		for _, s := range b.Softnet {
			prevSoft[s.CPU] = s.Dropped
		}
	}
	haveStats := false
	var ev []string
	for _, l := range in.Node.Links {
		st := l.Stats
		if st == nil {
			continue
		}
		haveStats = true
		r := row{l.Name, st.RxDropped, st.TxDropped, st.RxFifo, st.RxMissed}
		if overlayTypes[l.Type] {
			// A tunnel device counts packets it has no endpoint for (no FDB
			// entry: IPv6 multicast on flannel.1, a missing peer) as tx
			// drops; that is overlay-fdb-missing's business, not a queue.
			r.tx = 0
		}
		if p, ok := prev[l.Name]; ok {
			r.rx, r.fifo, r.miss = delta(st.RxDropped, p.RxDropped), delta(st.RxFifo, p.RxFifo), delta(st.RxMissed, p.RxMissed)
			if r.tx != 0 {
				r.tx = delta(st.TxDropped, p.TxDropped)
			}
		} // an interface new since the first snapshot: every drop happened in between
		if r.rx+r.tx+r.fifo+r.miss == 0 {
			continue
		}
		ev = append(ev, fmt.Sprintf("%s: rx_dropped %d, tx_dropped %d, rx_fifo_errors %d, rx_missed_errors %d (of rx %d / tx %d packets)", l.Name, r.rx, r.tx, r.fifo, r.miss, st.RxPackets, st.TxPackets))
	}
	for _, s := range in.Node.Softnet {
		d := s.Dropped
		if prevSoft != nil {
			d = delta(s.Dropped, prevSoft[s.CPU])
		}
		if d > 0 {
			ev = append(ev, fmt.Sprintf("softnet cpu %d: dropped %d (backlog full; processed %d, time_squeeze %d)", s.CPU, d, s.Processed, s.Squeezed))
		}
	}
	if !haveStats && len(in.Node.Softnet) == 0 {
		return Skip("no interface counters and no softnet statistics in the snapshot")
	}
	if len(ev) == 0 {
		if in.Before != nil {
			return Pass("no drops between the two snapshots")
		}
		return Pass("no interface or softnet drops since boot")
	}
	// Counters since boot are history: context (info) until two snapshots
	// show them rising now (warning).
	sev := finding.Info
	msg := "interfaces or the softnet backlog have dropped packets since boot; collect two snapshots a minute apart under load and run `netdoctor analyze AFTER --before BEFORE` to see whether they are rising now (random loss under load)"
	if in.Before != nil {
		sev = finding.Warning
		msg = "drops rose between the two snapshots: packets are lost at interface queues or the softnet backlog under the current load (random loss)"
	}
	sort.Strings(ev)
	return Result{Findings: []finding.Finding{{
		Severity: sev,
		Subject:  "interfaces",
		Message:  msg,
		Evidence: ev,
		Remediation: "for softnet drops raise net.core.netdev_max_backlog (and spread load with RPS/RSS); for NIC rx_missed/fifo grow the ring (`ethtool -G <dev> rx 4096`) and check IRQ affinity; rx_dropped alone may also count frames no protocol wanted; " +
			"verify: `ip -s link` and /proc/net/softnet_stat stop rising under the same load",
	}}}
}

// parsePortRange parses "32768 60999" (tab or spaces).
func parsePortRange(s string) (int, int, bool) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return 0, 0, false
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || hi < lo {
		return 0, 0, false
	}
	return lo, hi, true
}

func runEphemeralPorts(in *Input) Result {
	v, ok := in.sysctl("net.ipv4.ip_local_port_range")
	if !ok {
		return Skip("net.ipv4.ip_local_port_range is not in the snapshot")
	}
	lo, hi, ok := parsePortRange(v)
	if !ok {
		return Errorf("cannot read net.ipv4.ip_local_port_range %q", v)
	}
	size := hi - lo + 1
	// Counts per (local IP, remote): the collector's summary, else the socket list.
	type key struct{ proto, local, remote string }
	counts := map[key]int{}
	if st := in.Node.SocketStats; st != nil && len(st.PerDestination) > 0 {
		for _, d := range st.PerDestination {
			counts[key{d.Proto, d.LocalIP, d.Remote}] += d.Count
		}
	} else {
		for _, s := range in.Node.Sockets {
			if !strings.HasPrefix(s.Proto, "tcp") || s.State == "LISTEN" || s.Remote == "" {
				continue
			}
			ip := s.Local
			if i := strings.LastIndex(ip, ":"); i >= 0 {
				ip = ip[:i]
			}
			counts[key{s.Proto, strings.Trim(ip, "[]"), s.Remote}]++
		}
	}
	var fs []finding.Finding
	keys := make([]key, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if counts[keys[i]] != counts[keys[j]] {
			return counts[keys[i]] > counts[keys[j]]
		}
		return keys[i].remote < keys[j].remote
	})
	for _, k := range keys {
		n := counts[k]
		if n*100 < size*80 {
			continue
		}
		sev := finding.Warning
		if n >= size {
			sev = finding.Critical
		}
		ev := []string{
			fmt.Sprintf("%d %s sockets from %s to %s", n, k.proto, k.local, k.remote),
			fmt.Sprintf("net.ipv4.ip_local_port_range = %s (%d ports)", v, size),
		}
		if st := in.Node.SocketStats; st != nil {
			if tw := st.ByState["tcp TIME_WAIT"]; tw > 0 {
				ev = append(ev, fmt.Sprintf("tcp TIME_WAIT sockets on the node: %d", tw))
			}
		}
		fs = append(fs, finding.Finding{
			Severity: sev,
			Subject:  k.remote,
			Message:  fmt.Sprintf("%d connections from %s to %s use %d%% of the %d ephemeral ports: new connections to it fail with EADDRNOTAVAIL or time out", n, k.local, k.remote, n*100/size, size),
			Evidence: ev,
			Remediation: "widen the range (`sysctl -w net.ipv4.ip_local_port_range=\"1024 65000\"`), reuse connections (keep-alive, pooling) instead of opening one per request, and let TIME_WAIT be reused (net.ipv4.tcp_tw_reuse=1); " +
				"verify: `ss -tan dst " + k.remote + " | wc -l` stays well below the range size",
		})
	}
	if len(fs) == 0 {
		return Pass("no destination uses 80%% of the %d ephemeral ports", size)
	}
	return Result{Findings: fs}
}
