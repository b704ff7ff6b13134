package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netdoctor/netdoctor/internal/lab"
	"github.com/netdoctor/netdoctor/internal/lab/controlplane"
	"github.com/netdoctor/netdoctor/internal/lab/faults"
	"github.com/netdoctor/netdoctor/internal/lab/kubelet"
	"github.com/netdoctor/netdoctor/internal/lab/serve"
)

func init() { Register(newLabCommand) }

func newLabCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "A real Kubernetes cluster on this machine, over network namespaces, with faults on demand",
		Long: `netdoctor lab builds a real multi-node Kubernetes cluster (real etcd, API server,
controller-manager, scheduler, kube-proxy and CoreDNS) whose nodes and pods are network
namespaces of this machine, with a flannel-compatible VXLAN datapath. It uses 198.18.0.0/15
only, refuses to start if that overlaps the host's networks, and adds exactly one veth with one
address to the root namespace. Faults of the catalog can be injected and healed.`,
	}
	cmd.AddCommand(newLabUp(), newLabDown(), newLabStatus(), newLabFaults(), newLabInject(), newLabHeal(), newLabDemo(),
		newLabKubelet(), newLabPodexec(), newLabServe(), newLabDNSRace(), newLabPortFill(), newLabNICQueue())
	return cmd
}

func labNameFlag(cmd *cobra.Command, name *string) {
	cmd.Flags().StringVar(name, "name", lab.DefaultName, "lab name (1-8 lowercase letters/digits)")
}

func newLabUp() *cobra.Command {
	var c lab.Config
	var underlay, cluster, service string
	var keep bool
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Build and start the lab; prints the kubeconfig path",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := CheckOutput(); err != nil {
				return err
			}
			if os.Geteuid() != 0 {
				return UsageError("lab up needs root (network namespaces)")
			}
			var err error
			if underlay != "" {
				if c.UnderlayCIDR, err = netip.ParsePrefix(underlay); err != nil {
					return UsageError("--underlay-cidr %q: %v", underlay, err)
				}
			}
			if cluster != "" {
				if c.ClusterCIDR, err = netip.ParsePrefix(cluster); err != nil {
					return UsageError("--cluster-cidr %q: %v", cluster, err)
				}
			}
			if service != "" {
				if c.ServiceCIDR, err = netip.ParsePrefix(service); err != nil {
					return UsageError("--service-cidr %q: %v", service, err)
				}
			}
			c = c.WithDefaults()
			if err := c.Validate(); err != nil {
				return UsageError("%v", err)
			}
			if c.K8sBin, err = controlplane.FindK8sBin(); err != nil {
				return &ExitCodeError{Code: ExitError, Err: err}
			}
			if c.SelfBin, err = os.Executable(); err != nil {
				return fmt.Errorf("find the netdoctor binary: %w", err)
			}
			progress := func(s string) { fmt.Fprintln(cmd.ErrOrStderr(), "lab: "+s) }
			begin := time.Now()
			l, err := lab.Up(cmd.Context(), c, lab.UpOptions{Progress: progress, KeepOnFailure: keep})
			if err != nil {
				var oe *lab.OverlapError
				if errors.As(err, &oe) {
					return UsageError("%v", err)
				}
				return err
			}
			if Globals.Output == "json" {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(map[string]any{
					"name": c.Name, "kubeconfig": l.State.Kubeconfig, "seconds": time.Since(begin).Seconds()})
			}
			fmt.Fprintln(cmd.OutOrStdout(), l.State.Kubeconfig)
			fmt.Fprintf(cmd.ErrOrStderr(), "lab: try: kubectl --kubeconfig %s get nodes,pods -A -o wide\n", l.State.Kubeconfig)
			return nil
		},
	}
	labNameFlag(cmd, &c.Name)
	cmd.Flags().IntVar(&c.Nodes, "nodes", lab.DefaultNodes, "number of nodes")
	cmd.Flags().StringVar(&c.ProxyMode, "proxy-mode", "iptables", "kube-proxy mode: iptables or nftables")
	cmd.Flags().StringVar(&underlay, "underlay-cidr", lab.DefaultUnderlayCIDR.String(), "nodes' network (the lab's root link, the nodes, the control plane, DNS and external hosts); at least a /24")
	cmd.Flags().StringVar(&cluster, "cluster-cidr", lab.DefaultClusterCIDR.String(), "pod network (cluster CIDR)")
	cmd.Flags().StringVar(&service, "service-cidr", lab.DefaultServiceCIDR.String(), "service CIDR")
	cmd.Flags().BoolVar(&keep, "keep-on-failure", false, "leave a lab that failed to come up in place, for debugging")
	return cmd
}

func newLabDown() *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Remove the lab: processes, namespaces, links, files (idempotent, works after a crash)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			begin := time.Now()
			rep, err := lab.Down(name, "")
			if err != nil {
				return err
			}
			if Globals.Output == "json" {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(rep)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "lab %s down in %s: %d processes stopped, %d namespaces removed\n",
				name, time.Since(begin).Round(10*time.Millisecond), len(rep.Stopped), len(rep.Namespaces))
			return nil
		},
	}
	labNameFlag(cmd, &name)
	return cmd
}

func newLabStatus() *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the lab: kubeconfig, nodes, processes and their log files",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := CheckOutput(); err != nil {
				return err
			}
			s, err := lab.GetStatus(name, "")
			if err != nil {
				if errors.Is(err, lab.ErrNoLab) {
					return UsageError("no lab named %s: start one with `netdoctor lab up`", name)
				}
				return err
			}
			if Globals.Output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(s)
			}
			return printStatus(cmd.OutOrStdout(), s)
		},
	}
	labNameFlag(cmd, &name)
	return cmd
}

func printStatus(w io.Writer, s *lab.Status) error {
	fmt.Fprintf(w, "lab %s: %s (kube-proxy %s)\nkubeconfig: %s\nAPI server: %s (host reaches it through %s %s)\n\n",
		s.Name, s.Phase, s.ProxyMode, s.Kubeconfig, s.APIServer, s.RootLink, s.RootIP)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tNETNS\tIP\tPOD CIDR\tCRI")
	for _, n := range s.Nodes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.Name, n.Netns, n.IP, n.PodCIDR, n.CRIEndpoint)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "PROCESS\tPID\tALIVE\tRSS\tLOG")
	for _, p := range s.Processes {
		fmt.Fprintf(tw, "%s\t%d\t%v\t%d MiB\t%s\n", p.Name, p.PID, p.Alive, p.RSSKiB/1024, p.LogFile)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\nmemory: %d processes, RSS %d MiB, PSS %d MiB\n", s.Memory.Processes, s.Memory.RSSKiB/1024, s.Memory.PSSKiB/1024)
	return err
}

func newLabFaults() *cobra.Command {
	return &cobra.Command{
		Use:   "faults",
		Short: "List the faults the lab can inject (IDs as in the fault catalog)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := CheckOutput(); err != nil {
				return err
			}
			all := faults.All()
			if Globals.Output == "json" {
				type entry struct {
					ID        string         `json:"id"`
					Group     string         `json:"group"`
					Summary   string         `json:"summary"`
					Injection string         `json:"injection"`
					Checks    []faults.Check `json:"checks"`
				}
				var out []entry
				for _, f := range all {
					out = append(out, entry{f.ID, f.Group, f.Summary, f.Injection, f.Checks})
				}
				return json.NewEncoder(cmd.OutOrStdout()).Encode(out)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "FAULT\tGROUP\tWHAT")
			for _, f := range all {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", f.ID, f.Group, f.Summary)
			}
			return tw.Flush()
		},
	}
}

func openLab(name string) (*lab.Lab, error) {
	l, err := lab.Open(name, "")
	if err != nil {
		if errors.Is(err, lab.ErrNoLab) {
			return nil, UsageError("no lab named %s: start one with `netdoctor lab up`", name)
		}
		return nil, err
	}
	return l, nil
}

func newLabInject() *cobra.Command {
	var name, node string
	var verify bool
	cmd := &cobra.Command{
		Use:   "inject FAULT",
		Short: "Inject a fault of the catalog on a node (default node2)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, ok := faults.Get(args[0]); !ok {
				return UsageError("unknown fault %q: see `netdoctor lab faults`", args[0])
			}
			l, err := openLab(name)
			if err != nil {
				return err
			}
			in, err := faults.Inject(cmd.Context(), l, args[0], node)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "injected %s on %s (peer %s)\n", in.ID, in.Node, in.Peer)
			if verify {
				f, _ := faults.Get(in.ID)
				return printVerify(cmd.Context(), cmd.OutOrStdout(), l, f, in.Node, true)
			}
			return nil
		},
	}
	labNameFlag(cmd, &name)
	cmd.Flags().StringVar(&node, "node", "", "node to break (default node2)")
	cmd.Flags().BoolVar(&verify, "verify", false, "probe the traffic the fault must break and the traffic it must leave alone")
	return cmd
}

func newLabHeal() *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "heal [FAULT]",
		Short: "Heal an injected fault (all of them without an argument)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := openLab(name)
			if err != nil {
				return err
			}
			id := ""
			if len(args) == 1 {
				id = args[0]
			}
			healed, err := faults.Heal(cmd.Context(), l, id)
			for _, h := range healed {
				fmt.Fprintf(cmd.OutOrStdout(), "healed %s on %s\n", h.ID, h.Node)
			}
			if err != nil {
				return err
			}
			if len(healed) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "nothing to heal")
			}
			return nil
		},
	}
	labNameFlag(cmd, &name)
	return cmd
}

func printVerify(ctx context.Context, w io.Writer, l *lab.Lab, f faults.Fault, node string, injected bool) error {
	t, err := faults.NewTarget(l, node)
	if err != nil {
		return err
	}
	p := faults.NewProber(l)
	bad := 0
	for _, r := range p.Verify(ctx, f, t, injected) {
		mark := "ok  "
		if !r.Pass {
			mark, bad = "FAIL", bad+1
		}
		state := "passes"
		if !r.OK {
			state = "fails: " + r.Err
		}
		label := r.Check.String()
		if !injected { // after healing everything must work
			label = label[:strings.LastIndex(label, ":")] + ": works"
		}
		fmt.Fprintf(w, "  %s %-34s %s -> %s %s\n", mark, label, r.From, r.To, state)
	}
	if bad > 0 {
		return fmt.Errorf("%d checks of %s did not behave as the catalog says", bad, f.ID)
	}
	return nil
}

func newLabDemo() *cobra.Command {
	var c lab.Config
	var keep, withAgent bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Start the lab (unless running), then inject, prove and heal each fault in turn",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			out := cmd.OutOrStdout()
			c = c.WithDefaults()
			l, err := lab.Open(c.Name, "")
			started := false
			if err != nil {
				if os.Geteuid() != 0 {
					return UsageError("lab demo needs root (network namespaces)")
				}
				if c.K8sBin, err = controlplane.FindK8sBin(); err != nil {
					return &ExitCodeError{Code: ExitError, Err: err}
				}
				if c.SelfBin, err = os.Executable(); err != nil {
					return err
				}
				l, err = lab.Up(ctx, c, lab.UpOptions{Progress: func(s string) { fmt.Fprintln(out, "lab: "+s) }})
				if err != nil {
					return err
				}
				started = true
			}
			defer func() {
				if started && !keep {
					if _, err := lab.Down(c.Name, ""); err != nil {
						fmt.Fprintf(cmd.ErrOrStderr(), "lab down: %v\n", err)
					}
				}
			}()
			agent := false
			if withAgent {
				fmt.Fprintln(out, "installing the netdoctor agent (netdoctor install):")
				runIndented(ctx, out, "install", "--kubeconfig", l.State.Kubeconfig)
				if err := waitAgents(ctx, l); err != nil {
					fmt.Fprintf(out, "   agents not ready (%v): showing `netdoctor node check` instead\n", err)
				} else {
					agent = true
				}
			}
			var failed []string
			for _, f := range faults.All() {
				fmt.Fprintf(out, "\n== %s: %s\n   injection: %s\n", f.ID, f.Summary, f.Injection)
				in, err := faults.Inject(ctx, l, f.ID, "")
				if err != nil {
					failed = append(failed, f.ID)
					fmt.Fprintf(out, "   inject failed: %v\n", err)
					continue
				}
				fmt.Fprintf(out, "   injected on %s; the traffic it breaks:\n", in.Node)
				if err := printVerify(ctx, out, l, f, in.Node, true); err != nil {
					failed = append(failed, f.ID)
				}
				if agent {
					fmt.Fprintln(out, "   netdoctor check (the whole cluster, through the agents) says:")
					runIndented(ctx, out, "check", "--kubeconfig", l.State.Kubeconfig)
				} else {
					fmt.Fprintf(out, "   netdoctor node check on %s says:\n", in.Node)
					nodeCheck(ctx, out, l, in.Node)
				}
				if _, err := faults.Heal(ctx, l, f.ID); err != nil {
					failed = append(failed, f.ID)
					fmt.Fprintf(out, "   heal failed: %v\n", err)
					continue
				}
				fmt.Fprintln(out, "   healed; the same traffic again:")
				if err := printVerify(ctx, out, l, f, in.Node, false); err != nil {
					failed = append(failed, f.ID)
				}
			}
			if len(failed) > 0 {
				return fmt.Errorf("demo: faults that did not behave as the catalog says: %s", strings.Join(failed, ", "))
			}
			fmt.Fprintln(out, "\ndemo: every fault broke what the catalog says and healed")
			return nil
		},
	}
	labNameFlag(cmd, &c.Name)
	cmd.Flags().IntVar(&c.Nodes, "nodes", lab.DefaultNodes, "number of nodes (if the demo starts the lab)")
	cmd.Flags().StringVar(&c.ProxyMode, "proxy-mode", "iptables", "kube-proxy mode: iptables or nftables")
	cmd.Flags().BoolVar(&keep, "keep", false, "leave the lab running afterwards")
	cmd.Flags().BoolVar(&withAgent, "agent", true, "install the netdoctor agent and show `netdoctor check` of the whole cluster for each fault (else `node check` of the faulted node)")
	return cmd
}

// runIndented runs this binary with args and prints its output indented.
func runIndented(ctx context.Context, w io.Writer, args ...string) {
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(w, "      (cannot find netdoctor: %v)\n", err)
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	out, _ := exec.CommandContext(cctx, self, args...).CombinedOutput() // exit 1 means findings
	for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		fmt.Fprintln(w, "      "+line)
	}
}

// waitAgents waits until the agent DaemonSet runs a ready pod on every node.
func waitAgents(ctx context.Context, l *lab.Lab) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ds, err := l.Client.AppsV1().DaemonSets("netdoctor").Get(ctx, "netdoctor-agent", metav1.GetOptions{})
		if err == nil && ds.Status.DesiredNumberScheduled > 0 && ds.Status.NumberReady == ds.Status.DesiredNumberScheduled {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return err
			}
			return fmt.Errorf("%d of %d agents ready", ds.Status.NumberReady, ds.Status.DesiredNumberScheduled)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// nodeCheck runs `netdoctor node check` on a lab node's namespace (this binary, as a user
// would) and prints its report indented.
func nodeCheck(ctx context.Context, w io.Writer, l *lab.Lab, node string) {
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(w, "      (cannot find netdoctor: %v)\n", err)
		return
	}
	c := l.State.Config
	args := []string{"node", "check", "--netns", lab.NetnsPrefix(c.Name) + node, "--node-name", node,
		"--cluster-cidr", c.ClusterCIDR.String(), "--service-cidr", c.ServiceCIDR.String(),
		"--root-dir", lab.NodeDir(c.StateDir(), node)}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, _ := exec.CommandContext(cctx, self, args...).CombinedOutput() // exit 1 means findings
	for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		fmt.Fprintln(w, "      "+line)
	}
}

// Hidden plumbing commands run by the lab itself.

func newLabKubelet() *cobra.Command {
	var o kubelet.Options
	cmd := &cobra.Command{
		Use:    "kubelet",
		Short:  "Run a lab node's kubelet (started by lab up inside the node's namespace)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.Node == "" {
				return UsageError("--node is required")
			}
			return kubelet.Run(cmd.Context(), o)
		},
	}
	cmd.Flags().StringVar(&o.Lab, "lab", lab.DefaultName, "lab name")
	cmd.Flags().StringVar(&o.Node, "node", "", "node name")
	cmd.Flags().StringVar(&o.StateRoot, "state-root", "", "lab state root (default "+lab.DefaultStateRoot()+")")
	return cmd
}

func newLabPodexec() *cobra.Command {
	var mounts []string
	cmd := &cobra.Command{
		Use:    "podexec [--mount SRC:DST[:ro]]... -- PROGRAM [ARGS...]",
		Short:  "Run a pod's program in a private mount namespace with its bind mounts",
		Hidden: true,
		Args:   cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			var ms []kubelet.Mount
			for _, s := range mounts {
				m, err := kubelet.ParseMount(s)
				if err != nil {
					return UsageError("%v", err)
				}
				ms = append(ms, m)
			}
			return kubelet.ExecInMountNamespace(ms, args)
		},
	}
	cmd.Flags().StringArrayVar(&mounts, "mount", nil, "bind mount SRC:DST[:ro] (repeatable)")
	cmd.Flags().SetInterspersed(false)
	return cmd
}

func newLabServe() *cobra.Command {
	var name, ports, bind string
	cmd := &cobra.Command{
		Use:    "serve",
		Short:  "The lab's test server: listens on the given ports and answers with the pod name",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ps, err := serve.ParsePorts(ports)
			if err != nil {
				return UsageError("%v", err)
			}
			if name == "" {
				name, _ = os.Hostname()
			}
			return serve.Run(cmd.Context(), name, bind, ps)
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "name to answer with (the pod's)")
	cmd.Flags().StringVar(&ports, "ports", "", "ports to listen on: 80/TCP,53/UDP")
	cmd.Flags().StringVar(&bind, "bind", "", "address to listen on (default all)")
	return cmd
}
