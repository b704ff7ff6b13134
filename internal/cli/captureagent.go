package cli

// capture --node: the netdoctor agent on each node captures at that node's
// points (devices in its network namespace, or a pod's device) and returns
// a bounded pcapng through the same request and result ConfigMaps as
// tcping, trace and exec (toolagent.go); the CLI merges the per-node files
// into one pcapng, one interface block per point (node/netns/device).

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/netdoctor/netdoctor/internal/agent"
	"github.com/netdoctor/netdoctor/internal/capture"
	"github.com/netdoctor/netdoctor/internal/cri"
	"github.com/netdoctor/netdoctor/internal/install"
)

// defaultNodeCaptureDuration bounds a capture --node given -c only.
const defaultNodeCaptureDuration = time.Minute

// nodeCapture is capture --node's options.
type nodeCapture struct {
	nodes, ifaces, pods []string
	kube                *kubeFlags
	image               string
	filter, file        string
	count, snaplen      int
	duration            time.Duration
	maxSize             int64
	analyze             bool
	known               []net.IP
}

// nodeCaptureOut is one node's part of the result.
type nodeCaptureOut struct {
	Node      string          `json:"node"`
	Capture   *capture.Result `json:"capture"`
	Bytes     int             `json:"pcapngBytes"`
	Truncated bool            `json:"truncated,omitempty"`
}

// run captures on every node through its agent and merges the files.
func (o *nodeCapture) run(cmd *cobra.Command) error {
	if o.count <= 0 && o.duration <= 0 {
		return UsageError("capture --node: give -c N or --duration D, so that the capture on the node ends")
	}
	if o.duration > agent.MaxCaptureDuration {
		return UsageError("capture --node: --duration %s: at most %s", o.duration, agent.MaxCaptureDuration)
	}
	if o.duration <= 0 {
		o.duration = defaultNodeCaptureDuration
		_, _ = fmt.Fprintf(cmd.ErrOrStderr(), "capture --node: no --duration given: stopping after %s at the latest\n", o.duration)
	}
	limit := o.maxSize
	if limit <= 0 || limit > agent.MaxCaptureBytes {
		limit = agent.MaxCaptureBytes
	}
	ctx := cmd.Context()
	// One client for the pods' lookup, the agent check and every node's run (connect asks the
	// API server once each time); made when first needed, after the checks of the flags.
	var cs kubernetes.Interface
	client := func() (kubernetes.Interface, error) {
		if cs == nil {
			c, _, err := connect(ctx, o.kube)
			if err != nil {
				return nil, err
			}
			cs = c
		}
		return cs, nil
	}
	points := map[string][]agent.CapturePoint{}
	seen := map[string]bool{}
	for _, n := range o.nodes {
		if n == "" || seen[n] {
			return UsageError("--node %q: give each node once", n)
		}
		seen[n] = true
		for _, i := range o.ifaces {
			if strings.Contains(i, ":") {
				return UsageError("--iface %q: with --node, give a device of the node's network namespace (DEV), or --pod NS/NAME[:DEV] for a pod's", i)
			}
			points[n] = append(points[n], agent.CapturePoint{Iface: i})
		}
	}
	if len(o.pods) > 0 {
		if _, err := client(); err != nil {
			return err
		}
		for _, ref := range o.pods {
			name, dev, ok := strings.Cut(ref, ":")
			if !ok {
				dev = "eth0"
			}
			ns, pn, err := cri.SplitPodRef(name)
			if err != nil || dev == "" {
				return UsageError("--pod %q: want NS/NAME[:DEV]", ref)
			}
			pod, err := cs.CoreV1().Pods(ns).Get(ctx, pn, metav1.GetOptions{})
			if err != nil {
				if apierrors.IsNotFound(err) {
					return UsageError("--pod: no pod %s/%s in the cluster", ns, pn)
				}
				return UsageError("--pod: read pod %s/%s: %v", ns, pn, err)
			}
			if !seen[pod.Spec.NodeName] {
				return UsageError("--pod %s/%s runs on node %q: add --node %s", ns, pn, pod.Spec.NodeName, pod.Spec.NodeName)
			}
			if pod.Spec.HostNetwork {
				return UsageError("--pod %s/%s uses the host network: capture with --iface on node %s", ns, pn, pod.Spec.NodeName)
			}
			points[pod.Spec.NodeName] = append(points[pod.Spec.NodeName], agent.CapturePoint{Iface: dev, Pod: ns + "/" + pn, PodIP: pod.Status.PodIP})
		}
	}
	for _, n := range o.nodes {
		if len(points[n]) == 0 {
			return UsageError("capture --node %s: no point on that node (--iface DEV, or --pod NS/NAME[:DEV] of a pod there)", n)
		}
	}
	if _, err := client(); err != nil {
		return err
	}
	temporary := false
	if len(o.nodes) > 1 {
		// One temporary agent for all the nodes' runs (each run would otherwise deploy and
		// remove its own, under the others' feet).
		installed, _, err := install.Installed(ctx, cs)
		if err != nil {
			return &ExitCodeError{Code: ExitError, Err: err}
		}
		if !installed {
			_, _ = fmt.Fprint(cmd.ErrOrStderr(), noAgentNotice)
			remove, err := deployTemporaryAgent(ctx, cs, o.image, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			defer remove()
			temporary = true
		}
	}
	if Globals.Output == "text" {
		_, _ = fmt.Fprintf(cmd.ErrOrStderr(), "capturing through the agent on %s, filter %q\n", strings.Join(o.nodes, ", "), o.filter)
	}
	results := make([]*agent.ToolResult, len(o.nodes))
	errs := make([]error, len(o.nodes))
	var wg sync.WaitGroup
	for i, n := range o.nodes {
		spec := &agent.CaptureSpec{Points: points[n], Filter: o.filter, Count: o.count, Duration: o.duration, Snaplen: o.snaplen, MaxBytes: limit}
		w := &toolWhere{node: n, kube: o.kube, client: cs, image: o.image, temporaryAgent: temporary}
		wg.Go(func() {
			results[i], errs[i] = runOnNode(cmd, w, &agent.ToolRequest{Tool: agent.ToolCapture, Capture: spec}, o.duration)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return err
		}
		if results[i].Capture == nil {
			return UsageError("%s: the agent returned no capture", results[i].Where)
		}
	}
	var files [][]byte
	var outs []nodeCaptureOut
	for i, r := range results {
		c := r.Capture
		files = append(files, c.Pcapng)
		outs = append(outs, nodeCaptureOut{Node: o.nodes[i], Capture: c.Capture, Bytes: len(c.Pcapng), Truncated: c.Truncated})
	}
	merged, pkts, err := mergePcapng(files, o.filter)
	if err != nil {
		return fmt.Errorf("merge the nodes' captures: %w", err)
	}
	out := cmd.OutOrStdout()
	path := o.file
	if path == "" && o.analyze {
		f, err := os.CreateTemp("", "netdoctor-capture-*.pcapng")
		if err != nil {
			return fmt.Errorf("create temporary capture file: %w", err)
		}
		_ = f.Close()
		path = f.Name()
		defer func() { _ = os.Remove(path) }()
	}
	if path != "" {
		if err := os.WriteFile(path, merged, 0o644); err != nil {
			return UsageError("write capture file %s: %v", path, err)
		}
	}
	if path == "" && Globals.Output == "text" {
		for _, p := range pkts {
			_, _ = fmt.Fprintln(out, packetLine(p.label, p.ci, p.data))
		}
	}
	var an *capture.Analysis
	if o.analyze {
		if an, err = capture.AnalyzeFile(path, capture.AnalyzeOptions{NodeIPs: o.known}); err != nil {
			return fmt.Errorf("analyze capture: %w", err)
		}
		if o.file == "" {
			an.File = ""
		}
	}
	if Globals.Output == "json" {
		if err := writeJSON(out, struct {
			Nodes    []nodeCaptureOut  `json:"nodes"`
			Packets  int               `json:"packets"`
			File     string            `json:"file,omitempty"`
			Analysis *capture.Analysis `json:"analysis,omitempty"`
		}{outs, len(pkts), o.file, an}); err != nil {
			return err
		}
	} else {
		_, _ = fmt.Fprintf(out, "%d packets captured on %d node(s)", len(pkts), len(outs))
		if o.file != "" {
			_, _ = fmt.Fprintf(out, ", %d bytes written to %s", len(merged), o.file)
		}
		_, _ = fmt.Fprintln(out)
		for _, n := range outs {
			_, _ = fmt.Fprintf(out, "  node %s: %d packets, stopped by %s\n", n.Node, n.Capture.Packets, n.Capture.Stopped)
			if n.Truncated {
				_, _ = fmt.Fprintf(out, "    truncated: the capture on node %s stopped at %d bytes, the most a result through the agent carries (narrow the filter or lower -c)\n", n.Node, limit)
			}
			for _, p := range n.Capture.Points {
				_, _ = fmt.Fprintf(out, "  %s: %d packets, %d dropped by the kernel\n", p.Label, p.Written, p.KernelDrops)
			}
		}
		if an != nil {
			_, _ = fmt.Fprint(out, an.Text())
		}
	}
	if an != nil && len(an.Findings) > 0 {
		return FindingsExit()
	}
	return nil
}

// mergedPacket is one packet of a merged capture.
type mergedPacket struct {
	label string
	ci    gopacket.CaptureInfo
	data  []byte
}

// mergePcapng merges pcapng files (one section each, as capture writes
// them) into one: every file's interfaces in turn, their packets in time
// order, their interface statistics kept. It also returns the packets,
// each with its interface's name.
func mergePcapng(files [][]byte, filter string) ([]byte, []mergedPacket, error) {
	var ifs []pcapgo.NgInterface
	var pkts []mergedPacket
	for fi, b := range files {
		r, err := pcapgo.NewNgReader(bytes.NewReader(b), pcapgo.DefaultNgReaderOptions)
		if err != nil {
			return nil, nil, fmt.Errorf("read capture %d: %w", fi+1, err)
		}
		base := len(ifs)
		var local []mergedPacket
		for {
			data, ci, err := r.ReadPacketData()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, nil, fmt.Errorf("read capture %d: %w", fi+1, err)
			}
			local = append(local, mergedPacket{ci: ci, data: data})
		}
		for i := 0; i < r.NInterfaces(); i++ {
			in, err := r.Interface(i)
			if err != nil {
				return nil, nil, fmt.Errorf("read capture %d: interface %d: %w", fi+1, i, err)
			}
			ifs = append(ifs, in)
		}
		for _, p := range local {
			if p.ci.InterfaceIndex < 0 || p.ci.InterfaceIndex >= r.NInterfaces() {
				return nil, nil, fmt.Errorf("read capture %d: packet of interface %d, which the file does not describe", fi+1, p.ci.InterfaceIndex)
			}
			p.label = ifs[base+p.ci.InterfaceIndex].Name
			p.ci.InterfaceIndex += base
			pkts = append(pkts, p)
		}
	}
	if len(ifs) == 0 {
		return nil, nil, errors.New("no interface in the captures")
	}
	sort.SliceStable(pkts, func(i, j int) bool { return pkts[i].ci.Timestamp.Before(pkts[j].ci.Timestamp) })
	var buf bytes.Buffer
	mk := func(in pcapgo.NgInterface) pcapgo.NgInterface {
		return pcapgo.NgInterface{Name: in.Name, Comment: in.Comment, Description: in.Description, Filter: in.Filter, OS: in.OS,
			LinkType: in.LinkType, SnapLength: in.SnapLength, TimestampResolution: 9}
	}
	host, _ := os.Hostname()
	w, err := pcapgo.NewNgWriterInterface(&buf, mk(ifs[0]), pcapgo.NgWriterOptions{SectionInfo: pcapgo.NgSectionInfo{
		Hardware: runtime.GOARCH, OS: runtime.GOOS, Application: "netdoctor capture --node",
		Comment: fmt.Sprintf("merged on %s from %d node captures, filter %q", host, len(files), filter)}})
	if err != nil {
		return nil, nil, fmt.Errorf("write merged pcapng: %w", err)
	}
	for _, in := range ifs[1:] {
		if _, err := w.AddInterface(mk(in)); err != nil {
			return nil, nil, fmt.Errorf("write merged pcapng: %w", err)
		}
	}
	for _, p := range pkts {
		if err := w.WritePacket(p.ci, p.data); err != nil {
			return nil, nil, fmt.Errorf("write merged pcapng: %w", err)
		}
	}
	for i, in := range ifs {
		if in.Statistics.LastUpdate.IsZero() {
			continue
		}
		if err := w.WriteInterfaceStats(i, in.Statistics); err != nil {
			return nil, nil, fmt.Errorf("write merged pcapng: %w", err)
		}
	}
	if err := w.Flush(); err != nil {
		return nil, nil, fmt.Errorf("write merged pcapng: %w", err)
	}
	return buf.Bytes(), pkts, nil
}
