package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/netdoctor/netdoctor/internal/agent"
	"github.com/netdoctor/netdoctor/internal/cluster"
	"github.com/netdoctor/netdoctor/internal/finding"
	"github.com/netdoctor/netdoctor/internal/install"
	"github.com/netdoctor/netdoctor/internal/report"
)

func init() { Register(newCheckCommand) }

// ConnectTimeout bounds the first request to the API server, so that an
// unreachable one fails fast.
var ConnectTimeout = 5 * time.Second

type checkOptions struct {
	kube         *kubeFlags
	noAgent      bool
	timeout      time.Duration
	nodes        []string
	image        string
	peers        int
	seed         int64
	externalName string
	upstreams    []string
}

func newCheckCommand() *cobra.Command {
	o := &checkOptions{kube: newKubeFlags(true)}
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Sweep the whole cluster: every node, every known fault, plus the connectivity matrix",
		Long: `check reads the cluster through the Kubernetes API, asks the netdoctor agent
on every node (through request and result ConfigMaps; no port is opened) to
analyse its node and run its share of the probe plan, then reduces it all to
findings by node and a connectivity matrix (rows: nodes, columns: probes).

Without an installed agent it deploys a temporary one and removes it
afterwards, also on Ctrl-C or failure. --no-agent gives the API-only checks.
-n limits the Service findings to one namespace.

Exit codes: 0 nothing critical or warning, 1 findings, 2 netdoctor could not
do its job (bad input, API server unreachable).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := CheckOutput(); err != nil {
				return err
			}
			for _, u := range o.upstreams {
				if _, err := netip.ParseAddr(u); err != nil {
					if _, err := netip.ParseAddrPort(u); err != nil {
						return UsageError("--upstream %q: not an IP address or IP:port", u)
					}
				}
			}
			return runCheck(cmd, o)
		},
	}
	o.kube.AddFlags(cmd.Flags())
	f := cmd.Flags()
	f.BoolVar(&o.noAgent, "no-agent", false, "API-only checks: deploy nothing, ask no agent")
	f.DurationVar(&o.timeout, "timeout", 30*time.Second, "how long to wait for the agents' results (nodes that do not answer by then are reported as error)")
	f.StringSliceVar(&o.nodes, "nodes", nil, "check only these nodes (comma-separated)")
	f.StringVar(&o.image, "image", install.DefaultImg, "image of the temporary agent, when none is installed")
	f.IntVar(&o.peers, "peers", cluster.DefaultPeers, "peers each node probes (k); the matrix costs N·k probes")
	f.Int64Var(&o.seed, "seed", time.Now().Unix()/600, "rotation of the probed peers (default changes every 10 minutes)")
	f.StringVar(&o.externalName, "external-name", "", "a name outside the cluster for the dns-external probe (skipped when empty)")
	f.StringSliceVar(&o.upstreams, "upstream", nil, "DNS server(s) (IP or IP:port) that should answer --external-name; the agents ask them directly, beside the Corefile's forward targets (dns-upstream-failed)")
	return cmd
}

// connect builds the client and makes one short request so that an
// unreachable or refusing API server fails fast with exit code 2.
func connect(ctx context.Context, kube *kubeFlags) (kubernetes.Interface, *rest.Config, error) {
	rc, err := kube.ToRESTConfig()
	if err != nil {
		return nil, nil, UsageError("kubernetes client configuration: %v", err)
	}
	rc.QPS, rc.Burst = 50, 100
	guardLabClient(kube, rc)
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, nil, UsageError("kubernetes client: %v", err)
	}
	cctx, cancel := context.WithTimeout(ctx, ConnectTimeout)
	defer cancel()
	if _, err := cs.Discovery().RESTClient().Get().AbsPath("/version").Do(cctx).Raw(); err != nil {
		if ctx.Err() != nil {
			return nil, nil, UsageError("interrupted")
		}
		return nil, nil, UsageError("cannot reach the Kubernetes API server at %s within %s: %v", rc.Host, ConnectTimeout, err)
	}
	return cs, rc, nil
}

func runCheck(cmd *cobra.Command, o *checkOptions) (err error) {
	ctx := cmd.Context()
	start := time.Now()
	prog := newProgress(cmd.ErrOrStderr())
	defer prog.stop()
	cs, _, err := connect(ctx, o.kube)
	if err != nil {
		return err
	}
	prog.set("reading the cluster")
	snap, err := cluster.Collect(ctx, cs)
	if err != nil {
		return UsageError("read the cluster: %v", err)
	}
	nodes, err := pickNodes(snap, o.nodes)
	if err != nil {
		return err
	}
	var results map[string]*cluster.AgentResult
	var missing map[string]string
	var spec *cluster.ProbeSpec
	if !o.noAgent {
		installed, _, err := install.Installed(ctx, cs)
		if err != nil {
			return &ExitCodeError{Code: ExitError, Err: err}
		}
		if !installed {
			prog.set("deploying a temporary agent")
			remove, err := deployTemporaryAgent(ctx, cs, o.image, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			// Removed whatever happens next: failure, Ctrl-C, success.
			defer func() {
				prog.set("removing the temporary agent")
				remove()
			}()
			// Agents pick up a request written before they start (they
			// list existing requests first), so only the probe targets are
			// waited for: the plan needs their pod IPs. Bounded by half the
			// timeout; what is not running by then is left out of the plan.
			prog.set("waiting for the temporary agent's probe targets")
			wctx, cancel := context.WithTimeout(ctx, o.timeout/2)
			snap = waitTargets(wctx, cs, snap, nodes)
			cancel()
			if ctx.Err() != nil {
				return UsageError("interrupted")
			}
		}
		spec = cluster.BuildSpec(snap, cluster.SpecOptions{K: o.peers, Seed: o.seed, ExternalName: o.externalName, Upstreams: o.upstreams, Nodes: nodes})
		req := &agent.Request{ID: agent.NewID(), Nodes: nodes, Deadline: time.Now().Add(o.timeout), Hints: hintsOf(snap), Probe: spec}
		if err := agent.WriteRequest(ctx, cs, install.Namespace, req); err != nil {
			return &ExitCodeError{Code: ExitError, Err: err}
		}
		defer func() {
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if cerr := agent.Cleanup(cctx, cs, install.Namespace, req.ID); cerr != nil {
				_, _ = fmt.Fprintf(cmd.ErrOrStderr(), "warning: %v\n", cerr)
			}
		}()
		wctx, cancel := context.WithDeadline(ctx, req.Deadline)
		results, missing = agent.WaitResults(wctx, cs, install.Namespace, req.ID, nodes, func(got, total int) {
			prog.set(fmt.Sprintf("waiting for the agents: %d/%d nodes answered", got, total))
		})
		cancel()
		if ctx.Err() != nil {
			return UsageError("interrupted")
		}
	}
	if !o.noAgent && len(results) == 0 {
		why := "no agent answered before the deadline"
		for _, m := range missing {
			why = m
			break
		}
		return UsageError("no node's agent answered within --timeout %s (%s): check the agent pods with `kubectl -n %s get pods -o wide`, or run with --no-agent for the API-only checks", o.timeout, why, install.Namespace)
	}
	rep := cluster.Reduce(snap, spec, results, missing)
	if ns := o.namespace(); ns != "" {
		rep.Report = filterNamespace(rep.Report, ns)
	}
	prog.stop()
	if err := renderCheck(cmd.OutOrStdout(), rep, len(nodes), time.Since(start)); err != nil {
		return err
	}
	if rep.ExitCode() != 0 {
		return FindingsExit()
	}
	return nil
}

// waitTargets re-reads the cluster until every node has a running probe
// target pod with an IP, or ctx ends; it returns the latest snapshot.
func waitTargets(ctx context.Context, cs kubernetes.Interface, snap *cluster.Snapshot, nodes []string) *cluster.Snapshot {
	for {
		if s2, err := cluster.Collect(ctx, cs); err == nil {
			snap = s2
		}
		ready := map[string]bool{}
		for _, p := range snap.Pods {
			if p.Labels[cluster.LabelAppName] == cluster.TargetName && p.Phase == "Running" && len(p.PodIPs) > 0 {
				ready[p.Node] = true
			}
		}
		all := true
		for _, n := range nodes {
			all = all && ready[n]
		}
		if all {
			return snap
		}
		select {
		case <-ctx.Done():
			return snap
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (o *checkOptions) namespace() string {
	return o.kube.namespace()
}

func pickNodes(s *cluster.Snapshot, want []string) ([]string, error) {
	have := map[string]bool{}
	var all []string
	for _, n := range s.Nodes {
		have[n.Name] = true
		all = append(all, n.Name)
	}
	sort.Strings(all)
	if len(want) == 0 {
		if len(all) == 0 {
			return nil, UsageError("the cluster has no nodes")
		}
		return all, nil
	}
	for _, n := range want {
		if !have[n] {
			return nil, UsageError("--nodes: no node %q in the cluster (nodes: %s)", n, strings.Join(all, ", "))
		}
	}
	out := append([]string(nil), want...)
	sort.Strings(out)
	return out, nil
}

// hintsOf gives the agents the cluster facts their node rules need.
func hintsOf(s *cluster.Snapshot) agent.Hints {
	h := agent.Hints{PodCIDRs: map[string][]string{}, NodeIPs: map[string][]string{}, ServiceCIDRs: s.ServiceCIDRs}
	for _, n := range s.Nodes {
		h.PodCIDRs[n.Name] = n.PodCIDRs
		var ips []string
		if n.InternalIP != "" {
			ips = append(ips, n.InternalIP)
		}
		if p := n.Annotations[cluster.AnnotationFlannelPublicIP]; p != "" && p != n.InternalIP {
			ips = append(ips, p)
		}
		h.NodeIPs[n.Name] = ips
	}
	return h
}

// filterNamespace keeps Service and pod findings of one namespace (and
// every node-level finding).
func filterNamespace(r *finding.Report, ns string) *finding.Report {
	var fs []finding.Finding
	for _, f := range r.Findings {
		for _, p := range []string{"service/", "pod/"} {
			if rest, ok := strings.CutPrefix(f.Subject, p); ok && !strings.HasPrefix(rest, ns+"/") {
				goto skip
			}
		}
		fs = append(fs, f)
	skip:
	}
	return finding.NewReport(fs, r.Checks)
}

func renderCheck(w io.Writer, rep *cluster.CheckReport, nodes int, took time.Duration) error {
	if Globals.Output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	color := report.ColorFor(w)
	if _, err := fmt.Fprintf(w, "cluster check of %d node(s) in %.1fs: %s\n", nodes, took.Seconds(), rep.Verdict(nodes)); err != nil {
		return err
	}
	if err := report.Text(w, rep.Report, report.Options{Color: color, Verbose: Globals.Verbose}); err != nil {
		return err
	}
	if rep.Matrix != nil {
		if _, err := fmt.Fprintln(w, "\nconnectivity matrix (odd cells marked !):"); err != nil {
			return err
		}
		return rep.Matrix.Render(w, color)
	}
	return nil
}

// progress shows what check is doing on stderr, only on a terminal and only
// once the work has taken more than a second.
type progress struct {
	w       io.Writer
	tty     bool
	mu      sync.Mutex
	msg     string
	shown   bool
	done    chan struct{}
	stopped bool
}

func newProgress(w io.Writer) *progress {
	p := &progress{w: w, done: make(chan struct{})}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.tty = true
		go p.loop()
	}
	return p
}

func (p *progress) loop() {
	select {
	case <-p.done:
		return
	case <-time.After(time.Second):
	}
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		p.mu.Lock()
		if !p.stopped && p.msg != "" {
			_, _ = fmt.Fprintf(p.w, "\r\x1b[K%s...", p.msg)
			p.shown = true
		}
		p.mu.Unlock()
		select {
		case <-p.done:
			return
		case <-t.C:
		}
	}
}

func (p *progress) set(msg string) {
	p.mu.Lock()
	p.msg = msg
	p.mu.Unlock()
}

func (p *progress) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return
	}
	p.stopped = true
	close(p.done)
	if p.shown {
		_, _ = fmt.Fprint(p.w, "\r\x1b[K")
	}
}
