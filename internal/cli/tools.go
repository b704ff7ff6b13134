package cli

// The seeds' tools, built in (issue 5): tcping (paping), trace (mtr),
// capture (tcpdump at several points at once) and exec (nsenter). Each runs
// here, in a named/path network namespace, in a process's namespace or in
// a pod's namespace found through the node's CRI runtime. Targets and
// filters are data: nothing goes through a shell.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/miekg/dns"
	"github.com/spf13/cobra"
	"golang.org/x/term"
	"k8s.io/client-go/kubernetes"

	"github.com/netdoctor/netdoctor/internal/agent"
	"github.com/netdoctor/netdoctor/internal/capture"
	"github.com/netdoctor/netdoctor/internal/cri"
	"github.com/netdoctor/netdoctor/internal/install"
	"github.com/netdoctor/netdoctor/internal/mtr"
	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/tcping"
)

func init() {
	Register(newTcpingCommand)
	Register(newTraceCommand)
	Register(newCaptureCommand)
	Register(newExecCommand)
}

// toolWhere is where a tool runs: one network namespace given by name or
// path, by PID, or by pod (through the CRI), or this namespace.
type toolWhere struct {
	netns       string
	pid         int
	pod         string
	node        string
	criEndpoint string
	// --node: the cluster's kubectl flags and the temporary agent's image.
	kube  *kubeFlags
	image string
	// client, if set, is the caller's client of that cluster (else runOnNode connects).
	client kubernetes.Interface
	// temporaryAgent: the caller has deployed a temporary agent (for several nodes at
	// once) and removes it; runOnNode neither deploys nor removes one.
	temporaryAgent bool
}

func (w *toolWhere) addFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&w.netns, "netns", "", "run in this network namespace (name under /var/run/netns or a path)")
	f.IntVar(&w.pid, "pid", 0, "run in the network namespace of this process")
	f.StringVar(&w.pod, "pod", "", "run in the network namespace of this pod (NAMESPACE/NAME), found through this node's container runtime")
	f.StringVar(&w.node, "node", "", "run on this node of the cluster, through its netdoctor agent (with --pod: in that pod, which must run there)")
	f.StringVar(&w.criEndpoint, "cri-endpoint", "", "CRI runtime socket (default: "+strings.Join(cri.DefaultEndpoints, ", ")+")")
	f.StringVar(&w.image, "image", install.DefaultImg, "--node: image of the temporary agent, when none is installed")
	w.kube = newToolKubeFlags()
	w.kube.AddFlags(f)
}

// resolve returns the namespace path ("" = here) and a label for reports.
func (w *toolWhere) resolve(cmd *cobra.Command) (path, label string, err error) {
	if w.node != "" {
		return "", "", UsageError("--node runs through the agent, not here")
	}
	n := 0
	for _, set := range []bool{w.netns != "", w.pid != 0, w.pod != ""} {
		if set {
			n++
		}
	}
	if n > 1 {
		return "", "", UsageError("give at most one of --netns, --pid and --pod")
	}
	switch {
	case w.netns != "":
		p, err := namespace.Resolve(w.netns)
		if err != nil {
			return "", "", UsageError("%v", err)
		}
		return p, w.netns, nil
	case w.pid != 0:
		if w.pid < 0 {
			return "", "", UsageError("--pid %d: a process ID is a positive number", w.pid)
		}
		p, err := namespace.Resolve("pid:" + strconv.Itoa(w.pid))
		if err != nil {
			return "", "", UsageError("%v", err)
		}
		return p, "pid:" + strconv.Itoa(w.pid), nil
	case w.pod != "":
		pod, err := findPod(cmd, w.criEndpoint, w.pod)
		if err != nil {
			return "", "", err
		}
		return pod.Netns, "pod:" + w.pod, nil
	}
	return "", "", nil
}

// findPod looks a pod up through the CRI runtime of this node.
func findPod(cmd *cobra.Command, endpoint, ref string) (*cri.Pod, error) {
	ns, name, err := cri.SplitPodRef(ref)
	if err != nil {
		return nil, UsageError("--pod: %v", err)
	}
	c, err := cri.DialAny(cmd.Context(), endpoint)
	if err != nil {
		return nil, UsageError("find pod %s: %v", ref, err)
	}
	defer func() { _ = c.Close() }()
	pod, err := c.FindPod(cmd.Context(), ns, name)
	if err != nil {
		return nil, UsageError("find pod %s: %v", ref, err)
	}
	return pod, nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// ---- tcping ----

func newTcpingCommand() *cobra.Command {
	var where toolWhere
	var count int
	var interval, timeout time.Duration
	var udp bool
	var payload, expect, dnsName, qtype string
	cmd := &cobra.Command{
		Use:   "tcping HOST:PORT [-c N] [-i INTERVAL] [-t TIMEOUT] [--udp | --dns NAME]",
		Short: "Connect to HOST:PORT again and again (paping): loss, refused vs timed out, latency percentiles",
		Long: `tcping opens TCP connections to HOST:PORT (or sends UDP datagrams with --udp, or DNS
queries with --dns NAME) and prints one line per attempt: connected, refused (RST or
ICMP port unreachable: the path works, nothing listens), timed out (dropped
somewhere) or another error. The summary counts each outcome apart and gives the
loss and min/avg/max/stdev and p50/p90/p99 of the successful attempts.
Without -c it runs until Ctrl-C. Exit code 1 when any attempt failed.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := CheckOutput(); err != nil {
				return err
			}
			if _, _, err := tcping.ParseTarget(args[0]); err != nil {
				return UsageError("%v", err)
			}
			if count < 0 || interval <= 0 || timeout <= 0 {
				return UsageError("-c must be >= 0, -i and -t positive")
			}
			opts := tcping.Options{Target: args[0], Count: count, Interval: interval, Timeout: timeout}
			switch {
			case udp && dnsName != "":
				return UsageError("give --udp or --dns, not both")
			case udp:
				opts.Mode = tcping.ModeUDP
				opts.Payload = []byte(payload)
				if expect != "" {
					opts.Expect = []byte(expect)
				}
			case dnsName != "":
				opts.Mode = tcping.ModeDNS
				opts.DNSName = dnsName
				t, ok := dns.StringToType[strings.ToUpper(qtype)]
				if !ok {
					return UsageError("--qtype %q is not a DNS record type", qtype)
				}
				opts.DNSType = t
			}
			out := cmd.OutOrStdout()
			text := Globals.Output == "text"
			var res *tcping.Result
			if where.node != "" {
				if count == 0 {
					return UsageError("--node: give -c N (the agent answers once, when the attempts are done)")
				}
				spec := &agent.TcpingSpec{Target: opts.Target, Mode: string(opts.Mode), Count: count, Interval: interval, Timeout: timeout,
					Payload: opts.Payload, Expect: opts.Expect, DNSName: opts.DNSName, DNSType: opts.DNSType}
				tr, err := runOnNode(cmd, &where, &agent.ToolRequest{Tool: agent.ToolTcping, Tcping: spec}, time.Duration(count)*interval+timeout)
				if err != nil {
					return err
				}
				if res = tr.Tcping; res == nil {
					return UsageError("%s: the agent returned no tcping result", tr.Where)
				}
				if text {
					fmt.Fprintf(out, "tcping %s (%s) from %s\n", args[0], modeName(opts.Mode), res.Netns)
					for _, a := range res.Attempts {
						fmt.Fprintln(out, attemptLine(args[0], a))
					}
				}
			} else {
				path, label, err := where.resolve(cmd)
				if err != nil {
					return err
				}
				opts.Netns = path
				if text {
					fmt.Fprintf(out, "tcping %s (%s) from %s\n", args[0], modeName(opts.Mode), orHere(label))
				}
				res, err = tcping.Run(cmd.Context(), opts, func(a tcping.Attempt) {
					if text {
						fmt.Fprintln(out, attemptLine(args[0], a))
					}
				})
				if err != nil {
					return UsageError("tcping %s: %v", args[0], err)
				}
				res.Netns = label
			}
			if text {
				printTcpingSummary(out, res)
			} else if err := writeJSON(out, res); err != nil {
				return err
			}
			if res.Summary.OK < res.Summary.Sent || res.Summary.Sent == 0 {
				return FindingsExit()
			}
			return nil
		},
	}
	where.addFlags(cmd)
	f := cmd.Flags()
	f.IntVarP(&count, "count", "c", 0, "attempts (0: until Ctrl-C)")
	f.DurationVarP(&interval, "interval", "i", time.Second, "time between attempts")
	f.DurationVarP(&timeout, "timeout", "t", 2*time.Second, "time to wait for each attempt")
	f.BoolVar(&udp, "udp", false, "send a UDP datagram and wait for a reply instead of connecting")
	f.StringVar(&payload, "payload", "netdoctor tcping\n", "--udp: datagram to send")
	f.StringVar(&expect, "expect", "", "--udp: the reply must contain this text")
	f.StringVar(&dnsName, "dns", "", "send DNS queries for NAME to HOST:PORT instead of connecting")
	f.StringVar(&qtype, "qtype", "A", "--dns: query type")
	return cmd
}

func modeName(m tcping.Mode) string {
	if m == "" {
		return "tcp"
	}
	return string(m)
}

func orHere(label string) string {
	if label == "" {
		return "this network namespace"
	}
	return label
}

func attemptLine(target string, a tcping.Attempt) string {
	switch a.Outcome {
	case tcping.Connected:
		s := fmt.Sprintf("seq=%d %s: connected time=%.3f ms", a.Seq, target, a.RTT)
		if a.KernelRTT > 0 {
			s += fmt.Sprintf(" (handshake %.3f ms)", a.KernelRTT)
		}
		if a.Rcode != "" {
			s += fmt.Sprintf(" rcode=%s answers=%d", a.Rcode, a.Answers)
		}
		return s
	case tcping.Refused:
		return fmt.Sprintf("seq=%d %s: refused time=%.3f ms", a.Seq, target, a.RTT)
	case tcping.Timeout:
		return fmt.Sprintf("seq=%d %s: timed out after %.0f ms", a.Seq, target, a.RTT)
	}
	return fmt.Sprintf("seq=%d %s: error: %s", a.Seq, target, a.Error)
}

func printTcpingSummary(w io.Writer, r *tcping.Result) {
	s := r.Summary
	fmt.Fprintf(w, "--- %s (%s) tcping statistics ---\n", r.Target, r.Address)
	fmt.Fprintf(w, "%d sent, %d ok, %d refused, %d timed out, %d errors, %.1f%% loss\n", s.Sent, s.OK, s.Refused, s.Timeout, s.Errors, s.Loss)
	if s.RTT.Count > 0 {
		fmt.Fprintf(w, "time min/avg/max/stdev = %.3f/%.3f/%.3f/%.3f ms, p50/p90/p99 = %.3f/%.3f/%.3f ms\n",
			s.RTT.Min, s.RTT.Avg, s.RTT.Max, s.RTT.Stdev, s.RTT.P50, s.RTT.P90, s.RTT.P99)
	}
	if k := s.KernelRTT; k != nil {
		fmt.Fprintf(w, "handshake (kernel) min/avg/max/stdev = %.3f/%.3f/%.3f/%.3f ms, p50/p90/p99 = %.3f/%.3f/%.3f ms\n",
			k.Min, k.Avg, k.Max, k.Stdev, k.P50, k.P90, k.P99)
	}
	for rc, n := range s.Rcodes {
		fmt.Fprintf(w, "rcode %s: %d\n", rc, n)
	}
}

// ---- trace ----

func newTraceCommand() *cobra.Command {
	var where toolWhere
	var icmp, udp, numeric, report bool
	var tcpPort, count, maxHops, size int
	var interval, timeout time.Duration
	cmd := &cobra.Command{
		Use:   "trace HOST [--icmp | --udp | --tcp PORT] [-c N] [-m MAXHOPS] [-s SIZE] [-n] [-r]",
		Short: "Hop-by-hop loss and latency to HOST (mtr), read the way seed 002 says",
		Long: `trace sends probes with increasing TTL (ICMP echo by default, UDP, or TCP SYNs to a
port) and shows mtr's columns per hop: Loss%, Snt, Last, Avg, Best, Wrst, StDev.
On a terminal the table updates after every round; -r prints only the final
report. The result is read with seed 002's rules: loss at one hop that later
hops do not show is that router rate-limiting its ICMP (marked ~), loss that
persists to the end is real (marked !) and judged by the last hop, and a high
StDev means judge by Best and Wrst rather than Avg.
Exit code 1 when the destination is not reached or real loss remains.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := CheckOutput(); err != nil {
				return err
			}
			opts := mtr.Options{Target: args[0], Count: count, MaxHops: maxHops, Size: size, Interval: interval, Timeout: timeout, Resolve: !numeric}
			modes := 0
			if icmp {
				opts.Protocol, modes = mtr.ICMP, modes+1
			}
			if udp {
				opts.Protocol, modes = mtr.UDP, modes+1
			}
			if cmd.Flags().Changed("tcp") {
				opts.Protocol, opts.Port, modes = mtr.TCP, tcpPort, modes+1
				if tcpPort < 1 || tcpPort > 65535 {
					return UsageError("--tcp %d: a port is 1..65535", tcpPort)
				}
			}
			if modes > 1 {
				return UsageError("give one of --icmp, --udp and --tcp PORT")
			}
			if count <= 0 || maxHops <= 0 || maxHops > 255 || interval <= 0 || timeout <= 0 {
				return UsageError("-c must be positive, -m 1..255, -i and --timeout positive")
			}
			if ip := net.ParseIP(args[0]); ip != nil && ip.To4() == nil {
				return UsageError("trace %s: only IPv4 is supported for now", args[0])
			}
			if size != 0 && (size < 28 || size > 65000) {
				return UsageError("-s %d: packet size is 28..65000 bytes", size)
			}
			out := cmd.OutOrStdout()
			if where.node != "" {
				spec := &agent.TraceSpec{Target: opts.Target, Protocol: string(opts.Protocol), Port: opts.Port, Count: count,
					Interval: interval, Timeout: timeout, MaxHops: maxHops, Size: size, Resolve: !numeric}
				tr, err := runOnNode(cmd, &where, &agent.ToolRequest{Tool: agent.ToolTrace, Trace: spec}, time.Duration(count)*interval+timeout)
				if err != nil {
					return err
				}
				if tr.Trace == nil {
					return UsageError("%s: the agent returned no trace result", tr.Where)
				}
				return printTrace(out, tr.Trace, numeric, 0)
			}
			path, _, err := where.resolve(cmd)
			if err != nil {
				return err
			}
			opts.Netns = path
			live := Globals.Output == "text" && !report && isTerminal(out)
			lines := 0
			var onRound func(*mtr.Report)
			if live {
				onRound = func(r *mtr.Report) {
					s := r.Text(!numeric)
					if lines > 0 {
						fmt.Fprintf(out, "\x1b[%dA\x1b[J", lines) // back to the top of the table, clear below
					}
					_, _ = fmt.Fprint(out, s)
					lines = strings.Count(s, "\n")
				}
			}
			rep, err := mtr.Run(cmd.Context(), opts, onRound)
			if err != nil {
				return UsageError("trace %s: %v", args[0], err)
			}
			return printTrace(out, rep, numeric, lines)
		},
	}
	where.addFlags(cmd)
	f := cmd.Flags()
	f.BoolVar(&icmp, "icmp", false, "ICMP echo probes (default)")
	f.BoolVar(&udp, "udp", false, "UDP probes")
	f.IntVar(&tcpPort, "tcp", 0, "TCP SYN probes to this port")
	f.IntVarP(&count, "count", "c", 10, "rounds of probes (mtr -c)")
	f.IntVarP(&maxHops, "max-hops", "m", 30, "largest TTL")
	f.IntVarP(&size, "size", "s", 64, "probe size in bytes, IP header included")
	f.BoolVarP(&numeric, "numeric", "n", false, "show addresses only (no reverse lookups)")
	f.BoolVarP(&report, "report", "r", false, "report mode: no live display, print the final table")
	f.DurationVarP(&interval, "interval", "i", time.Second, "time between rounds")
	f.DurationVar(&timeout, "timeout", 2*time.Second, "a probe unanswered this long is lost")
	return cmd
}

// printTrace prints the final report (after a live table of lines lines,
// cleared first) and returns the exit status it calls for.
func printTrace(out io.Writer, rep *mtr.Report, numeric bool, lines int) error {
	if Globals.Output == "json" {
		if err := writeJSON(out, rep); err != nil {
			return err
		}
	} else {
		if lines > 0 {
			fmt.Fprintf(out, "\x1b[%dA\x1b[J", lines)
		}
		_, _ = fmt.Fprint(out, rep.Text(!numeric))
	}
	last := rep.Hops
	if !rep.Reached || (len(last) > 0 && last[len(last)-1].Loss > 0) {
		return FindingsExit()
	}
	return nil
}

// ---- capture ----

func newCaptureCommand() *cobra.Command {
	var ifaces, netnses, pods, nodes, nodeIPs []string
	var pids []int
	var criEndpoint, file, image string
	kube := newToolKubeFlags()
	var count, snaplen, bufferKiB int
	var duration time.Duration
	var maxSize int64
	var analyze bool
	cmd := &cobra.Command{
		Use:   "capture [--iface [NETNS:]DEV ...] [--netns N ...] [--pod NS/NAME[:DEV] ...] [FILTER...] [-w FILE] [-c N] [--duration D] [--snaplen S] [--analyze] | capture --analyze FILE",
		Short: "Capture at several points at once into one pcapng (tcpdump filter syntax); --analyze reads it like an expert",
		Long: `capture records packets at every point given, at the same time, into one pcapng
file with one interface block per point (named node/netns/device), readable by
Wireshark and tshark. Points:
  --iface DEV           device DEV in this namespace (or in the one --netns/--pid names, if one)
  --iface NETNS:DEV     device DEV in namespace NETNS (name, path or pid:N)
  --pod NS/NAME[:DEV]   the pod's device (default eth0), found through this node's CRI runtime
The FILTER is tcpdump's syntax, compiled to BPF (by netdoctor itself for the common
subset: protocols, host, net, port, portrange, less/greater, proto[off:size]
comparisons; by tcpdump -ddd, if installed, for the rest) and run in the kernel. The capture
stops at -c packets (all points together), after --duration, before the file
would exceed --max-size (default 100 MiB), or at Ctrl-C. Without -w each packet is
printed as a line.
--analyze looks at the result (or at an existing pcap/pcapng FILE): TCP
retransmissions and the segment size that keeps being retransmitted (MTU),
SYNs without SYN-ACK, RSTs, ICMP fragmentation-needed/unreachable, ARP requests
without replies, VXLAN outer/inner flows (with --node-ips: sources that are not
nodes), and for every flow the points where it was and was not seen.
With --node NODE (repeatable) the netdoctor agent on each node captures there:
--iface DEV is then a device in the node's network namespace and --pod
NS/NAME[:DEV] a pod's device on its node; give -c or --duration; each node
returns at most 600 KiB of pcapng (the summary says when a node's was cut);
the nodes' files are merged into one, one interface block per point.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := CheckOutput(); err != nil {
				return err
			}
			var known []net.IP
			for _, s := range nodeIPs {
				ip := net.ParseIP(s)
				if ip == nil {
					return UsageError("--node-ips: %q is not an IP address", s)
				}
				known = append(known, ip)
			}
			if len(nodes) > 0 {
				if len(netnses) > 0 || len(pids) > 0 || criEndpoint != "" || bufferKiB != capture.DefaultBufferBytes>>10 {
					return UsageError("capture --node: --netns, --pid, --cri-endpoint and -B are for a local capture (use --iface DEV and --pod NS/NAME[:DEV])")
				}
				if count < 0 || duration < 0 || snaplen < 0 || maxSize < 0 {
					return UsageError("-c, --duration, --snaplen and --max-size must not be negative")
				}
				nc := &nodeCapture{nodes: nodes, ifaces: ifaces, pods: pods, kube: kube, image: image, filter: strings.Join(args, " "), file: file,
					count: count, snaplen: snaplen, duration: duration, maxSize: maxSize, analyze: analyze, known: known}
				if !cmd.Flags().Changed("max-size") {
					nc.maxSize = 0
				}
				return nc.run(cmd)
			}
			noPoints := len(ifaces) == 0 && len(pods) == 0 && len(netnses) == 0 && len(pids) == 0
			if analyze && noPoints {
				if len(args) != 1 {
					return UsageError("capture --analyze FILE: give exactly one capture file (or points to capture from)")
				}
				an, err := capture.AnalyzeFile(args[0], capture.AnalyzeOptions{NodeIPs: known})
				if err != nil {
					return UsageError("%v", err)
				}
				return printAnalysis(cmd.OutOrStdout(), an)
			}
			points, err := capturePoints(cmd, ifaces, netnses, pids, pods, criEndpoint)
			if err != nil {
				return err
			}
			if count < 0 || duration < 0 || snaplen < 0 || maxSize < 0 || bufferKiB < 0 {
				return UsageError("-c, --duration, --snaplen, --max-size and -B must not be negative")
			}
			filter := strings.Join(args, " ")
			out := cmd.OutOrStdout()
			cfg := capture.Config{Points: points, Filter: filter, Snaplen: snaplen, Count: count, Duration: duration, MaxBytes: maxSize,
				BufferBytes: bufferKiB << 10}
			path := file
			var tmp string
			if analyze && path == "" {
				f, err := os.CreateTemp("", "netdoctor-capture-*.pcapng")
				if err != nil {
					return fmt.Errorf("create temporary capture file: %w", err)
				}
				_ = f.Close()
				tmp, path = f.Name(), f.Name()
				defer func() { _ = os.Remove(tmp) }()
			}
			var fh *os.File
			if path != "" {
				fh, err = os.Create(path)
				if err != nil {
					return UsageError("create capture file: %v", err)
				}
				defer func() { _ = fh.Close() }()
				cfg.Out = fh
			}
			if path == "" && Globals.Output == "text" {
				cfg.OnPacket = func(i int, ci gopacket.CaptureInfo, data []byte) {
					fmt.Fprintln(out, packetLine(points[i].Label(), ci, data))
				}
			}
			s, err := capture.Start(cmd.Context(), cfg)
			if err != nil {
				if errors.Is(err, capture.ErrBadFilter) || errors.Is(err, capture.ErrNoInterface) {
					return UsageError("%v", err)
				}
				return UsageError("start capture: %v", err)
			}
			if Globals.Output == "text" {
				var names []string
				for _, p := range points {
					names = append(names, p.Label())
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "capturing at %s, filter %q\n", strings.Join(names, ", "), filter)
			}
			res, err := s.Wait()
			if err != nil {
				return fmt.Errorf("capture: %w", err)
			}
			if fh != nil {
				if err := fh.Close(); err != nil {
					return fmt.Errorf("close capture file %s: %w", path, err)
				}
			}
			var an *capture.Analysis
			if analyze {
				if an, err = capture.AnalyzeFile(path, capture.AnalyzeOptions{NodeIPs: known}); err != nil {
					return fmt.Errorf("analyze capture: %w", err)
				}
				if tmp != "" {
					an.File = ""
				}
			}
			if Globals.Output == "json" {
				if err := writeJSON(out, struct {
					Capture  *capture.Result   `json:"capture"`
					File     string            `json:"file,omitempty"`
					Analysis *capture.Analysis `json:"analysis,omitempty"`
				}{res, file, an}); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(out, "%d packets captured, stopped by %s", res.Packets, res.Stopped)
				if file != "" {
					fmt.Fprintf(out, ", %d bytes written to %s", res.Bytes, file)
				}
				fmt.Fprintln(out)
				for _, p := range res.Points {
					fmt.Fprintf(out, "  %s: %d packets, %d dropped by the kernel\n", p.Label, p.Written, p.KernelDrops)
				}
				if an != nil {
					_, _ = fmt.Fprint(out, an.Text())
				}
			}
			if an != nil && len(an.Findings) > 0 {
				return FindingsExit()
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&ifaces, "iface", nil, "capture point: DEV or NETNS:DEV (repeatable)")
	f.StringArrayVar(&netnses, "netns", nil, "namespace for --iface DEV (one), or a point with --iface's device (repeatable)")
	f.IntSliceVar(&pids, "pid", nil, "like --netns, the namespace of this process")
	f.StringArrayVar(&pods, "pod", nil, "capture point: NS/NAME[:DEV] through the CRI runtime (repeatable)")
	f.StringArrayVar(&nodes, "node", nil, "capture on this node of the cluster through its agent (repeatable; --iface DEV and --pod NS/NAME[:DEV] are then points there; needs -c or --duration; at most 600 KiB per node)")
	f.StringVar(&image, "image", install.DefaultImg, "--node: image of the temporary agent, when none is installed")
	kube.AddFlags(f)
	f.StringVar(&criEndpoint, "cri-endpoint", "", "CRI runtime socket")
	f.StringVarP(&file, "write", "w", "", "write a pcapng file")
	f.IntVarP(&count, "count", "c", 0, "stop after N packets in all (0: no bound)")
	f.DurationVar(&duration, "duration", 0, "stop after this long (0: no bound)")
	f.IntVar(&snaplen, "snaplen", capture.DefaultSnaplen, "bytes kept per packet")
	f.Int64Var(&maxSize, "max-size", capture.DefaultMaxBytes, "stop before the file exceeds this many bytes")
	f.IntVarP(&bufferKiB, "buffer-size", "B", capture.DefaultBufferBytes>>10, "kernel ring per point, KiB (tcpdump -B)")
	f.BoolVar(&analyze, "analyze", false, "analyze the capture (or an existing FILE when no point is given)")
	f.StringSliceVar(&nodeIPs, "node-ips", nil, "known node addresses: VXLAN from other sources is flagged")
	return cmd
}

// capturePoints turns the point flags into points.
func capturePoints(cmd *cobra.Command, ifaces, netnses []string, pids []int, pods []string, criEndpoint string) ([]capture.Point, error) {
	var spaces []string // namespace specs given by --netns / --pid
	spaces = append(spaces, netnses...)
	for _, p := range pids {
		if p <= 0 {
			return nil, UsageError("--pid %d: a process ID is a positive number", p)
		}
		spaces = append(spaces, "pid:"+strconv.Itoa(p))
	}
	var points []capture.Point
	addNS := func(spec, dev string) error {
		path, err := namespace.Resolve(spec)
		if err != nil {
			return UsageError("%v", err)
		}
		points = append(points, capture.Point{Netns: path, NetnsLabel: spec, Iface: dev})
		return nil
	}
	var plain []string
	for _, i := range ifaces {
		if ns, dev, ok := strings.Cut(i, ":"); ok {
			if ns == "" || dev == "" {
				return nil, UsageError("--iface %q: want DEV or NETNS:DEV", i)
			}
			if err := addNS(ns, dev); err != nil {
				return nil, err
			}
			continue
		}
		plain = append(plain, i)
	}
	switch {
	case len(spaces) == 0:
		for _, dev := range plain {
			points = append(points, capture.Point{Iface: dev})
		}
	case len(plain) == 0:
		return nil, UsageError("--netns/--pid %s: say which device with --iface DEV", strings.Join(spaces, ", "))
	default:
		// Every device in every namespace given.
		for _, spec := range spaces {
			for _, dev := range plain {
				if err := addNS(spec, dev); err != nil {
					return nil, err
				}
			}
		}
	}
	for _, ref := range pods {
		name, dev, ok := strings.Cut(ref, ":")
		if !ok {
			dev = "eth0"
		}
		pod, err := findPod(cmd, criEndpoint, name)
		if err != nil {
			return nil, err
		}
		points = append(points, capture.Point{Netns: pod.Netns, NetnsLabel: "pod:" + name, Iface: dev, Pod: name})
	}
	if len(points) == 0 {
		return nil, UsageError("capture needs a point: --iface DEV, --iface NETNS:DEV or --pod NS/NAME (or --analyze FILE)")
	}
	return points, nil
}

// packetLine is a tcpdump-like one-line summary of a packet.
func packetLine(point string, ci gopacket.CaptureInfo, data []byte) string {
	lt := layers.LinkTypeEthernet
	if len(data) > 0 && data[0]>>4 == 4 && ci.CaptureLength == ci.Length && len(data) >= 20 && int(data[2])<<8|int(data[3]) == len(data) {
		lt = layers.LinkTypeRaw
	}
	p := gopacket.NewPacket(data, lt, gopacket.Lazy)
	desc := ""
	if ip, ok := p.NetworkLayer().(*layers.IPv4); ok {
		src, dst := ip.SrcIP.String(), ip.DstIP.String()
		switch l := p.TransportLayer().(type) {
		case *layers.TCP:
			flags := ""
			for _, f := range []struct {
				on bool
				c  string
			}{{l.SYN, "S"}, {l.FIN, "F"}, {l.RST, "R"}, {l.PSH, "P"}, {l.ACK, "."}} {
				if f.on {
					flags += f.c
				}
			}
			desc = fmt.Sprintf("IP %s.%d > %s.%d: tcp [%s] seq %d ack %d len %d", src, l.SrcPort, dst, l.DstPort, flags, l.Seq, l.Ack, len(l.Payload))
		case *layers.UDP:
			desc = fmt.Sprintf("IP %s.%d > %s.%d: udp len %d", src, l.SrcPort, dst, l.DstPort, len(l.Payload))
		default:
			if ic, ok := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4); ok {
				desc = fmt.Sprintf("IP %s > %s: icmp %s", src, dst, ic.TypeCode)
			} else {
				desc = fmt.Sprintf("IP %s > %s: proto %d", src, dst, ip.Protocol)
			}
		}
	} else if arp, ok := p.Layer(layers.LayerTypeARP).(*layers.ARP); ok {
		if arp.Operation == layers.ARPRequest {
			desc = fmt.Sprintf("ARP who-has %s tell %s", net.IP(arp.DstProtAddress), net.IP(arp.SourceProtAddress))
		} else {
			desc = fmt.Sprintf("ARP reply %s is-at %s", net.IP(arp.SourceProtAddress), net.HardwareAddr(arp.SourceHwAddress))
		}
	} else if l := p.LinkLayer(); l != nil {
		desc = l.LayerType().String()
	}
	return fmt.Sprintf("%s %s %s, length %d", ci.Timestamp.Format("15:04:05.000000"), point, desc, ci.Length)
}

func printAnalysis(w io.Writer, an *capture.Analysis) error {
	if Globals.Output == "json" {
		if err := writeJSON(w, an); err != nil {
			return err
		}
	} else {
		_, _ = fmt.Fprint(w, an.Text())
	}
	if len(an.Findings) > 0 {
		return FindingsExit()
	}
	return nil
}

// ---- exec ----

func newExecCommand() *cobra.Command {
	var where toolWhere
	var timeout time.Duration
	var maxOutput int
	cmd := &cobra.Command{
		Use:   "exec (--pod NS/NAME | --netns N | --pid P | --node NODE [--pod NS/NAME]) -- CMD [ARGS...]",
		Short: "Run a command in a pod's (or any) network namespace (nsenter -n), interactively",
		Long: `exec runs CMD with ARGS (no shell) with its network namespace switched to the pod's
(found through this node's container runtime), a named or path namespace, or a
process's. The rest of the process (files, users, mount namespace) is this
machine's, as with nsenter -t PID -n: the node's tools see the pod's network.
stdin, stdout and stderr are attached; the exit code is the command's.

With --node the netdoctor agent on that node runs it (in the node's network
namespace, or with --pod in that pod's, found through the node's container
runtime), not interactively: stdin is empty, the command is killed after
--timeout (exit 124, as timeout(1)), at most --max-output bytes of each of
stdout and stderr come back. They are printed as they came; the exit code is
the command's. -o json prints the whole result instead (stdout and stderr
base64-encoded, as they may be any bytes).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() != 0 {
				return UsageError("put the command after --: netdoctor exec --pod NS/NAME -- CMD ARGS...")
			}
			if where.netns == "" && where.pid == 0 && where.pod == "" && where.node == "" {
				return UsageError("exec needs --pod, --netns, --pid or --node")
			}
			if where.node != "" {
				return execOnNode(cmd, &where, args, timeout, maxOutput)
			}
			path, _, err := where.resolve(cmd)
			if err != nil {
				return err
			}
			bin, err := exec.LookPath(args[0])
			if err != nil {
				return UsageError("exec %s: %v", args[0], err)
			}
			// Not through internal/command: this child is interactive (its
			// stdin and output are the user's terminal, streamed, not buffered).
			c := exec.Command(bin, args[1:]...)
			c.Stdin, c.Stdout, c.Stderr = cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr()
			if err := namespace.Do(path, c.Start); err != nil {
				return UsageError("exec %s: %v", args[0], err)
			}
			err = c.Wait()
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code := ee.ExitCode()
				if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
					code = 128 + int(ws.Signal()) // as shells report it
				}
				return &ExitCodeError{Code: code}
			}
			if err != nil {
				return fmt.Errorf("exec %s: %w", args[0], err)
			}
			return nil
		},
	}
	where.addFlags(cmd)
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "--node: kill the command after this long")
	cmd.Flags().IntVar(&maxOutput, "max-output", agent.DefaultExecOutput, "--node: bytes of stdout and of stderr kept")
	cmd.Flags().SetInterspersed(false)
	return cmd
}
